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

use std::sync::Arc;

use arrow_arith::boolean;
use arrow_arith::numeric;
use arrow_array::{
    Array, ArrayRef, BooleanArray, Datum, Float64Array, Int64Array, RecordBatch, Scalar,
    StringArray, new_null_array,
};
use arrow_cast::cast;
use arrow_ord::cmp;
use arrow_schema::{ArrowError, DataType, Schema};
use sqlparser::ast::{
    self, BinaryOperator, Expr as Sql, FunctionArg, FunctionArgExpr, FunctionArguments, InTarget,
    UnaryOperator,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

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
    Or(Box<Node>, Box<Node>),
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

/// A result column or a single value to be broadcast.
enum Value {
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

    fn into_array(self, len: usize) -> Result<ArrayRef, ArrowError> {
        match self {
            Value::Array(a) => Ok(a),
            Value::Scalar(a) => {
                let idx = arrow_array::UInt32Array::from(vec![0u32; len]);
                arrow_select::take::take(a.as_ref(), &idx, None)
            }
        }
    }
}

fn is_numeric(t: &DataType) -> bool {
    matches!(t, DataType::Int64 | DataType::Float64)
}

/// The types expressions compute with: narrower integers and floats are widened.
fn widened(t: &DataType) -> Option<DataType> {
    match t {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32 => Some(DataType::Int64),
        DataType::Float16 | DataType::Float32 | DataType::Float64 | DataType::UInt64 => {
            Some(DataType::Float64)
        }
        DataType::Utf8 | DataType::Boolean | DataType::Null => Some(t.clone()),
        DataType::LargeUtf8 | DataType::Utf8View => Some(DataType::Utf8),
        _ => None,
    }
}

fn cast_to(node: Node, from: &DataType, to: &DataType) -> Node {
    if from == to {
        node
    } else {
        Node::Cast(Box::new(node), to.clone())
    }
}

struct Compiler<'s> {
    schema: &'s Schema,
}

type Typed = (Node, DataType);

impl Compiler<'_> {
    fn compile(&self, e: &Sql) -> Result<Typed, String> {
        match e {
            Sql::Identifier(id) => self.column(&id.value),
            Sql::CompoundIdentifier(parts) => self.column(
                &parts
                    .iter()
                    .map(|p| p.value.as_str())
                    .collect::<Vec<_>>()
                    .join("."),
            ),
            Sql::Nested(inner) => self.compile(inner),
            Sql::Value(v) => literal(&v.value),
            Sql::UnaryOp { op, expr } => {
                let (n, t) = self.compile(expr)?;
                match op {
                    UnaryOperator::Not => {
                        self.expect_bool(&t, "NOT")?;
                        Ok((Node::Not(Box::new(n)), DataType::Boolean))
                    }
                    UnaryOperator::Minus if is_numeric(&t) => Ok((Node::Neg(Box::new(n)), t)),
                    UnaryOperator::Plus if is_numeric(&t) => Ok((n, t)),
                    UnaryOperator::Minus | UnaryOperator::Plus => {
                        Err(format!("`{op}` needs a number, got {t}"))
                    }
                    other => Err(format!("operator `{other}` is not supported")),
                }
            }
            Sql::BinaryOp { left, op, right } => self.binary(left, op, right),
            Sql::IsNull(x) => Ok((
                Node::IsNull(Box::new(self.compile(x)?.0), false),
                DataType::Boolean,
            )),
            Sql::IsNotNull(x) => Ok((
                Node::IsNull(Box::new(self.compile(x)?.0), true),
                DataType::Boolean,
            )),
            Sql::IsTrue(x) | Sql::IsFalse(x) | Sql::IsNotTrue(x) | Sql::IsNotFalse(x) => {
                let (n, t) = self.compile(x)?;
                self.expect_bool(&t, "IS TRUE/FALSE")?;
                let truth = matches!(e, Sql::IsTrue(_) | Sql::IsNotTrue(_));
                // `x IS TRUE` is never null: known and equal (Kleene AND gives false for null).
                let is = Node::And(
                    Box::new(Node::IsNull(Box::new(n.clone()), true)),
                    Box::new(Node::Cmp(
                        CmpOp::Eq,
                        Box::new(n),
                        Box::new(Node::Literal(Arc::new(BooleanArray::from(vec![truth])))),
                    )),
                );
                let negated = matches!(e, Sql::IsNotTrue(_) | Sql::IsNotFalse(_));
                Ok((
                    if negated { Node::Not(Box::new(is)) } else { is },
                    DataType::Boolean,
                ))
            }
            Sql::Between {
                expr,
                negated,
                low,
                high,
            } => {
                let ge = self.comparison(expr, CmpOp::GtEq, low)?;
                let le = self.comparison(expr, CmpOp::LtEq, high)?;
                let both = Node::And(Box::new(ge), Box::new(le));
                Ok((
                    if *negated {
                        Node::Not(Box::new(both))
                    } else {
                        both
                    },
                    DataType::Boolean,
                ))
            }
            Sql::In {
                expr,
                target: InTarget::List(list),
                negated,
                ..
            } => {
                if list.is_empty() {
                    return Err("`IN ()` needs at least one value".into());
                }
                let mut any: Option<Node> = None;
                for item in list {
                    let eq = self.comparison(expr, CmpOp::Eq, item)?;
                    any = Some(match any {
                        None => eq,
                        Some(prev) => Node::Or(Box::new(prev), Box::new(eq)),
                    });
                }
                let any = any.ok_or("`IN ()` needs at least one value")?;
                Ok((
                    if *negated {
                        Node::Not(Box::new(any))
                    } else {
                        any
                    },
                    DataType::Boolean,
                ))
            }
            Sql::Like {
                negated,
                any: false,
                expr,
                pattern,
                escape_char: None,
            }
            | Sql::ILike {
                negated,
                any: false,
                expr,
                pattern,
                escape_char: None,
            } => {
                let (x, xt) = self.compile(expr)?;
                let (p, pt) = self.compile(pattern)?;
                if xt != DataType::Utf8 || pt != DataType::Utf8 {
                    return Err(format!("LIKE compares text with text, got {xt} and {pt}"));
                }
                Ok((
                    Node::Like {
                        expr: Box::new(x),
                        pattern: Box::new(p),
                        negated: *negated,
                        case_insensitive: matches!(e, Sql::ILike { .. }),
                    },
                    DataType::Boolean,
                ))
            }
            Sql::Function(f) => self.function(f),
            other => Err(format!("`{other}` is not supported in expressions")),
        }
    }

    fn column(&self, name: &str) -> Result<Typed, String> {
        let index = match self.schema.index_of(name) {
            Ok(i) => i,
            Err(_) => {
                let folded: Vec<usize> = (0..self.schema.fields().len())
                    .filter(|&i| self.schema.field(i).name().eq_ignore_ascii_case(name))
                    .collect();
                match folded.as_slice() {
                    [i] => *i,
                    _ => {
                        return Err(format!(
                            "unknown field `{name}` (input has: {})",
                            tidegauge_core::schema::describe(self.schema)
                        ));
                    }
                }
            }
        };
        let t = self.schema.field(index).data_type();
        let w = widened(t)
            .ok_or_else(|| format!("field `{name}` has type {t}, which expressions cannot use"))?;
        Ok((cast_to(Node::Column(index), t, &w), w))
    }

    fn expect_bool(&self, t: &DataType, what: &str) -> Result<(), String> {
        if matches!(t, DataType::Boolean | DataType::Null) {
            Ok(())
        } else {
            Err(format!("{what} needs true/false, got {t}"))
        }
    }

    /// Both sides, widened to a common type for comparison or arithmetic.
    fn unify(&self, l: Typed, r: Typed) -> Result<(Node, Node, DataType), String> {
        let ((ln, lt), (rn, rt)) = (l, r);
        let common = match (&lt, &rt) {
            (a, b) if a == b => a.clone(),
            (DataType::Null, b) => b.clone(),
            (a, DataType::Null) => a.clone(),
            (a, b) if is_numeric(a) && is_numeric(b) => DataType::Float64,
            (a, b) => return Err(format!("cannot combine {a} with {b}")),
        };
        Ok((cast_to(ln, &lt, &common), cast_to(rn, &rt, &common), common))
    }

    fn comparison(&self, l: &Sql, op: CmpOp, r: &Sql) -> Result<Node, String> {
        let (lc, rc) = (self.compile(l)?, self.compile(r)?);
        let (lt, rt) = (lc.1.clone(), rc.1.clone());
        let (ln, rn, _) = self
            .unify(lc, rc)
            .map_err(|_| format!("cannot compare `{l}` ({lt}) with `{r}` ({rt})"))?;
        Ok(Node::Cmp(op, Box::new(ln), Box::new(rn)))
    }

    fn binary(&self, left: &Sql, op: &BinaryOperator, right: &Sql) -> Result<Typed, String> {
        let cmp = match op {
            BinaryOperator::Eq => Some(CmpOp::Eq),
            BinaryOperator::NotEq => Some(CmpOp::NotEq),
            BinaryOperator::Lt => Some(CmpOp::Lt),
            BinaryOperator::LtEq => Some(CmpOp::LtEq),
            BinaryOperator::Gt => Some(CmpOp::Gt),
            BinaryOperator::GtEq => Some(CmpOp::GtEq),
            _ => None,
        };
        if let Some(c) = cmp {
            return Ok((self.comparison(left, c, right)?, DataType::Boolean));
        }
        let (l, lt) = self.compile(left)?;
        let (r, rt) = self.compile(right)?;
        match op {
            BinaryOperator::And | BinaryOperator::Or => {
                self.expect_bool(&lt, &op.to_string())?;
                self.expect_bool(&rt, &op.to_string())?;
                let (l, r) = (Box::new(l), Box::new(r));
                Ok((
                    if *op == BinaryOperator::And {
                        Node::And(l, r)
                    } else {
                        Node::Or(l, r)
                    },
                    DataType::Boolean,
                ))
            }
            BinaryOperator::Plus
            | BinaryOperator::Minus
            | BinaryOperator::Multiply
            | BinaryOperator::Divide
            | BinaryOperator::Modulo => {
                if !(is_numeric(&lt) || lt == DataType::Null)
                    || !(is_numeric(&rt) || rt == DataType::Null)
                {
                    return Err(format!("`{op}` needs numbers, got {lt} and {rt}"));
                }
                let (mut l, mut r, mut t) = self.unify((l, lt), (r, rt))?;
                let a = match op {
                    BinaryOperator::Plus => ArithOp::Add,
                    BinaryOperator::Minus => ArithOp::Sub,
                    BinaryOperator::Multiply => ArithOp::Mul,
                    BinaryOperator::Divide => {
                        if t != DataType::Float64 {
                            l = cast_to(l, &t, &DataType::Float64);
                            r = cast_to(r, &t, &DataType::Float64);
                            t = DataType::Float64;
                        }
                        ArithOp::Div
                    }
                    _ => ArithOp::Rem,
                };
                Ok((Node::Arith(a, Box::new(l), Box::new(r)), t))
            }
            other => Err(format!("operator `{other}` is not supported")),
        }
    }

    fn function(&self, f: &ast::Function) -> Result<Typed, String> {
        let name = f.name.to_string().to_ascii_lowercase();
        let args: Vec<&Sql> = match &f.args {
            FunctionArguments::List(list) => list
                .args
                .iter()
                .map(|a| match a {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(e),
                    other => Err(format!("argument `{other}` is not supported")),
                })
                .collect::<Result<_, _>>()?,
            FunctionArguments::None => Vec::new(),
            FunctionArguments::Subquery(_) => return Err("subqueries are not supported".into()),
        };
        match (name.as_str(), args.as_slice()) {
            ("abs", [x]) => {
                let (n, t) = self.compile(x)?;
                if !is_numeric(&t) {
                    return Err(format!("abs() needs a number, got {t}"));
                }
                Ok((Node::Abs(Box::new(n)), t))
            }
            ("abs", _) => Err("abs() takes one argument".into()),
            (other, _) => Err(format!("unknown function `{other}` (supported: abs)")),
        }
    }
}

fn literal(v: &ast::Value) -> Result<Typed, String> {
    Ok(match v {
        ast::Value::Number(s, _) => {
            if let Ok(i) = s.parse::<i64>() {
                (
                    Node::Literal(Arc::new(Int64Array::from(vec![i]))),
                    DataType::Int64,
                )
            } else {
                let f: f64 = s.parse().map_err(|_| format!("bad number `{s}`"))?;
                (
                    Node::Literal(Arc::new(Float64Array::from(vec![f]))),
                    DataType::Float64,
                )
            }
        }
        ast::Value::SingleQuotedString(s) => (
            Node::Literal(Arc::new(StringArray::from(vec![s.as_str()]))),
            DataType::Utf8,
        ),
        ast::Value::Boolean(b) => (
            Node::Literal(Arc::new(BooleanArray::from(vec![*b]))),
            DataType::Boolean,
        ),
        ast::Value::Null => (
            Node::Literal(new_null_array(&DataType::Null, 1)),
            DataType::Null,
        ),
        other => return Err(format!("literal `{other}` is not supported")),
    })
}

impl Expression {
    /// Parses and type-checks `text` against `schema`.
    pub fn compile(text: &str, schema: &Schema) -> Result<Self, String> {
        let dialect = GenericDialect {};
        let sql = Parser::new(&dialect)
            .try_with_sql(text)
            .and_then(|mut p| {
                let e = p.parse_expr()?;
                p.expect_token(&sqlparser::tokenizer::Token::EOF)?;
                Ok(e)
            })
            .map_err(|e| format!("cannot parse `{text}`: {e}"))?;
        let (root, data_type) = Compiler { schema }.compile(&sql)?;
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

fn as_bool(a: &ArrayRef) -> Result<&BooleanArray, ArrowError> {
    a.as_any().downcast_ref::<BooleanArray>().ok_or_else(|| {
        ArrowError::InvalidArgumentError(format!("expected booleans, got {}", a.data_type()))
    })
}

fn eval(node: &Node, batch: &RecordBatch) -> Result<Value, ArrowError> {
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
        Node::And(l, r) | Node::Or(l, r) => {
            let l = eval(l, batch)?.into_array(len)?;
            let r = eval(r, batch)?.into_array(len)?;
            let l = null_as_bool(l)?;
            let r = null_as_bool(r)?;
            Value::Array(Arc::new(if matches!(node, Node::And(..)) {
                boolean::and_kleene(as_bool(&l)?, as_bool(&r)?)?
            } else {
                boolean::or_kleene(as_bool(&l)?, as_bool(&r)?)?
            }))
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::Field;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("sensor_id", DataType::Utf8, false),
            Field::new("ts", DataType::Int64, false),
            Field::new("value", DataType::Float64, true),
            Field::new("is_anomaly", DataType::Boolean, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![
                    "pump-1", "pump-2", "fan-1", "FAN-2",
                ])),
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
                Arc::new(Float64Array::from(vec![
                    Some(-5.0),
                    Some(2.0),
                    None,
                    Some(12.0),
                ])),
                Arc::new(BooleanArray::from(vec![true, false, true, false])),
            ],
        )
        .unwrap()
    }

    fn rows(text: &str) -> Vec<Option<bool>> {
        let b = batch();
        let e = Expression::compile(text, &b.schema()).unwrap();
        assert_eq!(e.data_type(), &DataType::Boolean, "{text}");
        let out = e.evaluate(&b).unwrap();
        as_bool(&out).unwrap().iter().collect()
    }

    fn t(v: [Option<bool>; 4]) -> Vec<Option<bool>> {
        v.to_vec()
    }

    #[test]
    fn evaluates_sql_conditions() {
        let (y, n, u) = (Some(true), Some(false), None);
        assert_eq!(rows("is_anomaly"), t([y, n, y, n]));
        assert_eq!(rows("NOT is_anomaly"), t([n, y, n, y]));
        assert_eq!(rows("abs(value) > 4"), t([y, n, u, y]));
        assert_eq!(rows("value > 1 AND ts >= 2"), t([n, y, u, y]));
        assert_eq!(rows("is_anomaly OR value > 100"), t([y, n, y, n]));
        assert_eq!(rows("value BETWEEN 0 AND 10"), t([n, y, u, n]));
        assert_eq!(rows("ts IN (1, 4)"), t([y, n, n, y]));
        assert_eq!(rows("ts NOT IN (1, 4)"), t([n, y, y, n]));
        assert_eq!(rows("sensor_id LIKE 'pump-%'"), t([y, y, n, n]));
        assert_eq!(rows("sensor_id ILIKE 'fan%'"), t([n, n, y, y]));
        assert_eq!(rows("value IS NULL"), t([n, n, y, n]));
        assert_eq!(
            rows("value IS NOT NULL AND value / 2 > 0.5"),
            t([n, y, n, y])
        );
        assert_eq!(rows("ts % 2 = 0"), t([n, y, n, y]));
        assert_eq!(rows("-value > 0"), t([y, n, u, n]));
        assert_eq!(rows("ts * 1.5 > 3"), t([n, n, y, y]));
        assert_eq!(rows("(value > 100) IS FALSE"), t([y, y, n, y]));
        assert_eq!(rows("sensor_id = 'fan-1'"), t([n, n, y, n]));
        assert_eq!(rows("TRUE"), t([y, y, y, y]));
    }

    #[test]
    fn rejects_what_cannot_work_before_running() {
        let b = batch();
        let err = |text: &str| Expression::compile(text, &b.schema()).unwrap_err();
        assert!(err("valu > 3").contains("unknown field `valu`"));
        assert!(
            err("sensor_id > 3").contains("cannot compare `sensor_id` (Utf8) with `3` (Int64)")
        );
        assert!(err("value AND is_anomaly").contains("needs true/false"));
        assert!(err("sqrt(value) > 1").contains("unknown function"));
        assert!(err("value > ").contains("cannot parse"));
        assert!(err("value > 1 extra").contains("cannot parse"));
        assert!(err("(SELECT 1)").contains("not supported"));
    }
}
