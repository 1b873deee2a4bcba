//! Waiting for a followed file to grow: woken by the kernel the moment it is written
//! (inotify on Linux), with a timeout so a replaced or truncated file is still noticed.
//! Elsewhere, or when inotify cannot be had, it sleeps the timeout (polling).

use std::path::Path;
use std::time::Duration;

/// Waits for changes to one file.
pub(crate) struct FileWatch {
    #[cfg(target_os = "linux")]
    inotify: Option<linux::Inotify>,
}

impl FileWatch {
    /// Starts watching `path`. Changes made from now on wake [`FileWatch::wait`], also
    /// those made before it is called.
    pub(crate) fn new(path: &Path) -> Self {
        #[cfg(target_os = "linux")]
        {
            let inotify = linux::Inotify::watch(path);
            if inotify.is_none() {
                tracing::debug!("cannot watch {} with inotify; polling", path.display());
            }
            FileWatch { inotify }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = path;
            FileWatch {}
        }
    }

    /// Returns when the file was written (or its metadata changed, or it was moved or
    /// deleted) since the last call, or after `timeout`.
    pub(crate) fn wait(&mut self, timeout: Duration) {
        #[cfg(target_os = "linux")]
        if let Some(i) = &self.inotify {
            i.wait(timeout);
            return;
        }
        std::thread::sleep(timeout);
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;
    use std::time::Duration;

    /// An inotify instance watching one file.
    pub(super) struct Inotify {
        pub(super) fd: OwnedFd,
    }

    impl Inotify {
        pub(super) fn watch(path: &Path) -> Option<Inotify> {
            let name = CString::new(path.as_os_str().as_bytes()).ok()?;
            // SAFETY: inotify_init1 takes only flags; it returns -1 or a new descriptor
            // that nothing else owns.
            let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
            if raw < 0 {
                return None;
            }
            // SAFETY: `raw` is a valid descriptor owned by no one else (just created).
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let mask = libc::IN_MODIFY
                | libc::IN_ATTRIB
                | libc::IN_CLOSE_WRITE
                | libc::IN_MOVE_SELF
                | libc::IN_DELETE_SELF;
            // SAFETY: `fd` is an open inotify descriptor and `name` a NUL-terminated
            // string that outlives the call.
            let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), name.as_ptr(), mask) };
            (wd >= 0).then_some(Inotify { fd })
        }

        /// Waits until an event is queued or `timeout` passes, then drains the queue.
        pub(super) fn wait(&self, timeout: Duration) {
            let mut poll = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
            // SAFETY: `poll` points to one valid pollfd for the duration of the call.
            // An error (EINTR) only ends the wait early, which callers allow.
            unsafe { libc::poll(&mut poll, 1, ms) };
            let mut buf = [0u8; 4096];
            loop {
                // SAFETY: `buf` is writable for its whole length; the descriptor is
                // non-blocking, so this returns -1 (EAGAIN) once the queue is empty.
                let n =
                    unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[cfg(target_os = "linux")]
    #[test]
    fn a_write_wakes_the_watch_and_is_drained() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grows.jsonl");
        std::fs::write(&path, b"").unwrap();
        let mut watch = FileWatch::new(&path);
        let inotify = watch.inotify.as_ref().expect("inotify on linux");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{}\n").unwrap();
        f.flush().unwrap();
        // The write is queued: a readable descriptor.
        let mut p = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&inotify.fd),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        assert_eq!(unsafe { libc::poll(&mut p, 1, 0) }, 1);
        watch.wait(Duration::from_secs(3600));
        // Drained: nothing queued any more.
        let inotify = watch.inotify.as_ref().unwrap();
        let mut p = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&inotify.fd),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        assert_eq!(unsafe { libc::poll(&mut p, 1, 0) }, 0);
    }
}
