//! Expressions over event fields, in SQL syntax: `is_anomaly AND abs(z) > 4`,
//! `sensor_id LIKE 'pump-%' OR value BETWEEN 0 AND 10`.
//!
//! Parsing is `sqlparser`'s (no home-made grammar). The tree is type-checked against the
//! input schema when the pipeline is validated, so a misspelt field or a comparison of a
//! string with a number is a config error with its place; evaluation runs Arrow compute
//! kernels over whole columns.
//!
//! Supported: field names, number/string/boolean/NULL literals, `AND OR NOT`,
//! `= != <> < <= > >=`, `+ - * / %` (`/` always divides as floating point), unary `-`,
//! `IS [NOT] NULL`, `IS [NOT] TRUE/FALSE`, `[NOT] BETWEEN`, `[NOT] IN (...)`,
//! `[NOT] LIKE`, `[NOT] ILIKE`, and the function `abs(x)`.
//!
//! Limits, the same wherever an expression comes from (pipeline file, admin API, reload):
//! at most [`MAX_EXPRESSION_BYTES`] of text, and at most [`MAX_DEPTH`] levels of nesting
//! once chains of `AND`, chains of `OR` and `IN` lists are counted as one level each
//! (they are evaluated as flat lists, so `a = 1 OR a = 2 OR ...` and `a IN (1, 2, ...)`
//! may be as long as the text allows). Parsing runs on a thread of its own whose stack is
//! sized for the deepest tree that the text limit allows, so no expression can overflow
//! a caller's stack; evaluation recurses at most [`MAX_DEPTH`] deep whatever the input.

mod compile;
mod eval;
#[cfg(test)]
mod tests;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Schema};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

use compile::Compiler;
use eval::eval;

/// Longest expression text accepted, in bytes.
pub const MAX_EXPRESSION_BYTES: usize = 16 * 1024;
/// Deepest nesting accepted (a chain of `AND`, a chain of `OR` or an `IN` list is one
/// level).
pub const MAX_DEPTH: usize = 64;
/// Stack of the thread that parses and compiles: the parser's own recursion is bounded
/// (sqlparser's limit of 50), but a chain of binary operators makes a tree as deep as
/// the chain is long (up to `MAX_EXPRESSION_BYTES / 2` levels), which dropping and
/// printing it walk recursively. The worst shapes at the text limit need between 2 and
/// 4 MiB in a debug build (measured with `no_expression_can_exhaust_the_stack`); this
/// leaves a wide margin, and only the pages touched are ever committed.
const PARSE_STACK_BYTES: usize = 64 * 1024 * 1024;
/// How much of an expression error messages quote.
const QUOTED_CHARS: usize = 120;

/// `text` as error messages quote it: whole when short, else its start and its length.
pub fn excerpt(text: &str) -> String {
    if text.chars().count() <= QUOTED_CHARS {
        text.to_string()
    } else {
        let head: String = text.chars().take(QUOTED_CHARS).collect();
        format!("{head}… ({} bytes)", text.len())
    }
}

/// A compiled, type-checked expression.
#[derive(Clone, Debug)]
pub struct Expression {
    root: Node,
    data_type: DataType,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CmpOp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

#[derive(Clone, Debug)]
enum Node {
    Column(usize),
    Literal(ArrayRef),
    Cast(Box<Node>, DataType),
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    /// Every one of them (Kleene logic), a flattened chain of `AND`.
    All(Vec<Node>),
    /// Any one of them (Kleene logic), a flattened chain of `OR`.
    Any(Vec<Node>),
    /// `expr IN (list)`: equal to any item (Kleene logic).
    InList(Box<Node>, Vec<Node>),
    Cmp(CmpOp, Box<Node>, Box<Node>),
    Arith(ArithOp, Box<Node>, Box<Node>),
    Neg(Box<Node>),
    IsNull(Box<Node>, bool),
    Like {
        expr: Box<Node>,
        pattern: Box<Node>,
        negated: bool,
        case_insensitive: bool,
    },
    Abs(Box<Node>),
}

impl Expression {
    /// Parses and type-checks `text` against `schema`, within the limits of this
    /// module ([`MAX_EXPRESSION_BYTES`], [`MAX_DEPTH`]), on a thread of its own.
    pub fn compile(text: &str, schema: &Schema) -> Result<Self, String> {
        if text.len() > MAX_EXPRESSION_BYTES {
            return Err(format!(
                "the expression is {} bytes long; at most {MAX_EXPRESSION_BYTES} are accepted (`{}`)",
                text.len(),
                excerpt(text)
            ));
        }
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("tg-expr".into())
                .stack_size(PARSE_STACK_BYTES)
                .spawn_scoped(scope, || Self::compile_here(text, schema))
                .map_err(|e| format!("cannot start the expression parser: {e}"))?
                .join()
                .map_err(|_| format!("the expression parser failed on `{}`", excerpt(text)))?
        })
    }

    /// [`Expression::compile`] on the calling thread (whose stack must be large enough
    /// for the parse tree).
    fn compile_here(text: &str, schema: &Schema) -> Result<Self, String> {
        let dialect = GenericDialect {};
        let sql = Parser::new(&dialect)
            .try_with_sql(text)
            .and_then(|mut p| {
                let e = p.parse_expr()?;
                p.expect_token(&sqlparser::tokenizer::Token::EOF)?;
                Ok(e)
            })
            .map_err(|e| format!("cannot parse `{}`: {e}", excerpt(text)))?;
        let compiler = Compiler {
            schema,
            depth: std::cell::Cell::new(0),
        };
        let (root, data_type) = compiler.compile(&sql)?;
        Ok(Expression { root, data_type })
    }

    /// The type of the result.
    pub fn data_type(&self) -> &DataType {
        &self.data_type
    }

    /// Evaluates over every row of `batch`.
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<ArrayRef, ArrowError> {
        eval(&self.root, batch)?.into_array(batch.num_rows())
    }
}
