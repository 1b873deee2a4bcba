//! Evaluating a compiled expression over a batch with Arrow compute kernels.

use std::sync::Arc;

use arrow_arith::boolean;
use arrow_arith::numeric;
use arrow_array::{
    Array, ArrayRef, BooleanArray, Datum, Float64Array, Int64Array, RecordBatch, Scalar,
};
use arrow_cast::cast;
use arrow_ord::cmp;
use arrow_schema::{ArrowError, DataType};

use super::{ArithOp, CmpOp, Node};

/// A result column or a single value to be broadcast.
pub(super) enum Value {
    Array(ArrayRef),
    Scalar(ArrayRef),
}

impl Value {
    fn datum(&self) -> Box<dyn Datum + '_> {
        match self {
            Value::Array(a) => Box::new(a.as_ref()),
            Value::Scalar(a) => Box::new(Scalar::new(a.clone())),
        }
    }

    pub(super) fn into_array(self, len: usize) -> Result<ArrayRef, ArrowError> {
        match self {
            Value::Array(a) => Ok(a),
            Value::Scalar(a) => {
                let idx = arrow_array::UInt32Array::from(vec![0u32; len]);
                arrow_select::take::take(a.as_ref(), &idx, None)
            }
        }
    }
}

pub(super) fn as_bool(a: &ArrayRef) -> Result<&BooleanArray, ArrowError> {
    a.as_any().downcast_ref::<BooleanArray>().ok_or_else(|| {
        ArrowError::InvalidArgumentError(format!("expected booleans, got {}", a.data_type()))
    })
}

pub(super) fn eval(node: &Node, batch: &RecordBatch) -> Result<Value, ArrowError> {
    let len = batch.num_rows();
    Ok(match node {
        Node::Column(i) => Value::Array(batch.column(*i).clone()),
        Node::Literal(a) => Value::Scalar(a.clone()),
        Node::Cast(x, t) => match eval(x, batch)? {
            Value::Array(a) => Value::Array(cast(&a, t)?),
            Value::Scalar(a) => Value::Scalar(cast(&a, t)?),
        },
        Node::Not(x) => {
            let a = eval(x, batch)?.into_array(len)?;
            Value::Array(Arc::new(boolean::not(as_bool(&a)?)?))
        }
        Node::And(l, r) => {
            let l = eval(l, batch)?.into_array(len)?;
            let r = eval(r, batch)?.into_array(len)?;
            let l = null_as_bool(l)?;
            let r = null_as_bool(r)?;
            Value::Array(Arc::new(boolean::and_kleene(as_bool(&l)?, as_bool(&r)?)?))
        }
        Node::All(items) | Node::Any(items) => {
            let all = matches!(node, Node::All(_));
            let mut acc: Option<BooleanArray> = None;
            for item in items {
                let a = null_as_bool(eval(item, batch)?.into_array(len)?)?;
                let a = as_bool(&a)?;
                acc = Some(match acc {
                    None => a.clone(),
                    Some(prev) if all => boolean::and_kleene(&prev, a)?,
                    Some(prev) => boolean::or_kleene(&prev, a)?,
                });
            }
            Value::Array(Arc::new(
                acc.unwrap_or_else(|| BooleanArray::from(vec![all; len])),
            ))
        }
        Node::InList(x, items) => {
            let x = eval(x, batch)?;
            let xd = x.datum();
            let mut acc: Option<BooleanArray> = None;
            for item in items {
                let v = eval(item, batch)?;
                let eq = cmp::eq(xd.as_ref(), v.datum().as_ref())?;
                let eq = scalar_if_both(Arc::new(eq), &x, &v).into_array(len)?;
                let eq = as_bool(&eq)?;
                acc = Some(match acc {
                    None => eq.clone(),
                    Some(prev) => boolean::or_kleene(&prev, eq)?,
                });
            }
            Value::Array(Arc::new(
                acc.unwrap_or_else(|| BooleanArray::from(vec![false; len])),
            ))
        }
        Node::Cmp(op, l, r) => {
            let (l, r) = (eval(l, batch)?, eval(r, batch)?);
            let (ld, rd) = (l.datum(), r.datum());
            let out = match op {
                CmpOp::Eq => cmp::eq(ld.as_ref(), rd.as_ref())?,
                CmpOp::NotEq => cmp::neq(ld.as_ref(), rd.as_ref())?,
                CmpOp::Lt => cmp::lt(ld.as_ref(), rd.as_ref())?,
                CmpOp::LtEq => cmp::lt_eq(ld.as_ref(), rd.as_ref())?,
                CmpOp::Gt => cmp::gt(ld.as_ref(), rd.as_ref())?,
                CmpOp::GtEq => cmp::gt_eq(ld.as_ref(), rd.as_ref())?,
            };
            scalar_if_both(Arc::new(out), &l, &r)
        }
        Node::Arith(op, l, r) => {
            let (l, r) = (eval(l, batch)?, eval(r, batch)?);
            let (ld, rd) = (l.datum(), r.datum());
            let out = match op {
                ArithOp::Add => numeric::add(ld.as_ref(), rd.as_ref())?,
                ArithOp::Sub => numeric::sub(ld.as_ref(), rd.as_ref())?,
                ArithOp::Mul => numeric::mul(ld.as_ref(), rd.as_ref())?,
                ArithOp::Div => numeric::div(ld.as_ref(), rd.as_ref())?,
                ArithOp::Rem => numeric::rem(ld.as_ref(), rd.as_ref())?,
            };
            scalar_if_both(out, &l, &r)
        }
        Node::Neg(x) => match eval(x, batch)? {
            Value::Array(a) => Value::Array(numeric::neg(a.as_ref())?),
            Value::Scalar(a) => Value::Scalar(numeric::neg(a.as_ref())?),
        },
        Node::IsNull(x, negated) => {
            let a = eval(x, batch)?.into_array(len)?;
            Value::Array(Arc::new(if *negated {
                boolean::is_not_null(a.as_ref())?
            } else {
                boolean::is_null(a.as_ref())?
            }))
        }
        Node::Like {
            expr,
            pattern,
            negated,
            case_insensitive,
        } => {
            let (x, p) = (eval(expr, batch)?, eval(pattern, batch)?);
            let (xd, pd) = (x.datum(), p.datum());
            let out = match (case_insensitive, negated) {
                (false, false) => arrow_string::like::like(xd.as_ref(), pd.as_ref())?,
                (false, true) => arrow_string::like::nlike(xd.as_ref(), pd.as_ref())?,
                (true, false) => arrow_string::like::ilike(xd.as_ref(), pd.as_ref())?,
                (true, true) => arrow_string::like::nilike(xd.as_ref(), pd.as_ref())?,
            };
            scalar_if_both(Arc::new(out), &x, &p)
        }
        Node::Abs(x) => {
            let a = eval(x, batch)?;
            let scalar = matches!(a, Value::Scalar(_));
            let a = match a {
                Value::Array(a) | Value::Scalar(a) => a,
            };
            let out: ArrayRef = match a.data_type() {
                DataType::Float64 => {
                    let f = a.as_any().downcast_ref::<Float64Array>().ok_or_else(|| {
                        ArrowError::InvalidArgumentError("abs: not Float64".into())
                    })?;
                    Arc::new(f.unary::<_, arrow_array::types::Float64Type>(f64::abs))
                }
                DataType::Int64 => {
                    let i = a
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .ok_or_else(|| ArrowError::InvalidArgumentError("abs: not Int64".into()))?;
                    Arc::new(i.try_unary::<_, arrow_array::types::Int64Type, _>(|v| {
                        v.checked_abs()
                            .ok_or_else(|| ArrowError::ComputeError(format!("abs({v}) overflows")))
                    })?)
                }
                other => {
                    return Err(ArrowError::InvalidArgumentError(format!(
                        "abs() of {other}"
                    )));
                }
            };
            if scalar {
                Value::Scalar(out)
            } else {
                Value::Array(out)
            }
        }
    })
}

/// A `Null`-typed array (from a NULL literal) as booleans, all null.
fn null_as_bool(a: ArrayRef) -> Result<ArrayRef, ArrowError> {
    if a.data_type() == &DataType::Null {
        cast(&a, &DataType::Boolean)
    } else {
        Ok(a)
    }
}

fn scalar_if_both(out: ArrayRef, l: &Value, r: &Value) -> Value {
    if matches!((l, r), (Value::Scalar(_), Value::Scalar(_))) {
        Value::Scalar(out)
    } else {
        Value::Array(out)
    }
}
