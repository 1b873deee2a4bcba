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
    /// Nesting of the node being compiled.
    depth: std::cell::Cell<usize>,
}

type Typed = (Node, DataType);

/// The common type two operands are widened to for comparison or arithmetic.
fn common_type(a: &DataType, b: &DataType) -> Option<DataType> {
    Some(match (a, b) {
        (a, b) if a == b => a.clone(),
        (DataType::Null, b) => b.clone(),
        (a, DataType::Null) => a.clone(),
        (a, b) if is_numeric(a) && is_numeric(b) => DataType::Float64,
        _ => return None,
    })
}

impl Compiler<'_> {
    /// Compiles `e` one level deeper than its parent, refusing to go past [`MAX_DEPTH`].
    fn compile(&self, e: &Sql) -> Result<Typed, String> {
        let depth = self.depth.get() + 1;
        if depth > MAX_DEPTH {
            return Err(format!(
                "the expression is nested more than {MAX_DEPTH} levels deep (a chain of AND, \
                 a chain of OR or an IN list counts as one level)"
            ));
        }
        self.depth.set(depth);
        let compiled = self.compile_at_this_depth(e);
        self.depth.set(depth - 1);
        compiled
    }

    /// The operands of a chain of `op` (`a OR b OR c`, however it is bracketed by the
    /// parser), in order, gathered without recursion.
    fn chain(&self, e: &Sql, op: &BinaryOperator) -> Result<Typed, String> {
        let mut operands = Vec::new();
        let mut stack = vec![e];
        while let Some(x) = stack.pop() {
            match x {
                Sql::BinaryOp { left, op: o, right } if o == op => {
                    stack.push(right);
                    stack.push(left);
                }
                other => operands.push(other),
            }
        }
        let mut nodes = Vec::with_capacity(operands.len());
        for operand in operands {
            let (n, t) = self.compile(operand)?;
            self.expect_bool(&t, &op.to_string())?;
            nodes.push(n);
        }
        Ok((
            if *op == BinaryOperator::And {
                Node::All(nodes)
            } else {
                Node::Any(nodes)
            },
            DataType::Boolean,
        ))
    }

    fn compile_at_this_depth(&self, e: &Sql) -> Result<Typed, String> {
        match e {
            Sql::BinaryOp {
                op: op @ (BinaryOperator::And | BinaryOperator::Or),
                ..
            } => self.chain(e, op),
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
                let (x, xt) = self.compile(expr)?;
                let mut common = xt.clone();
                let mut items = Vec::with_capacity(list.len());
                for item in list {
                    let (n, t) = self.compile(item)?;
                    common = common_type(&common, &t).ok_or_else(|| {
                        format!(
                            "cannot compare `{}` ({xt}) with `{}` ({t})",
                            excerpt(&expr.to_string()),
                            excerpt(&item.to_string())
                        )
                    })?;
                    items.push((n, t));
                }
                let items = items
                    .into_iter()
                    .map(|(n, t)| cast_to(n, &t, &common))
                    .collect();
                let any = Node::InList(Box::new(cast_to(x, &xt, &common)), items);
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
            other => Err(format!(
                "`{}` is not supported in expressions",
                excerpt(&other.to_string())
            )),
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
                            "unknown field `{}` (input has: {}){}",
                            excerpt(name),
                            tidegauge_core::schema::describe(self.schema),
                            tidegauge_core::suggest::hint(
                                name,
                                self.schema.fields().iter().map(|f| f.name().as_str())
                            )
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
        let common =
            common_type(&lt, &rt).ok_or_else(|| format!("cannot combine {lt} with {rt}"))?;
        Ok((cast_to(ln, &lt, &common), cast_to(rn, &rt, &common), common))
    }

    fn comparison(&self, l: &Sql, op: CmpOp, r: &Sql) -> Result<Node, String> {
        let (lc, rc) = (self.compile(l)?, self.compile(r)?);
        let (lt, rt) = (lc.1.clone(), rc.1.clone());
        let (ln, rn, _) = self.unify(lc, rc).map_err(|_| {
            format!(
                "cannot compare `{}` ({lt}) with `{}` ({rt})",
                excerpt(&l.to_string()),
                excerpt(&r.to_string())
            )
        })?;
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
                    other => Err(format!(
                        "argument `{}` is not supported",
                        excerpt(&other.to_string())
                    )),
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
            (other, _) => Err(format!(
                "unknown function `{}` (supported: abs)",
                excerpt(other)
            )),
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
                let f: f64 = s
                    .parse()
                    .map_err(|_| format!("bad number `{}`", excerpt(s)))?;
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
        other => {
            return Err(format!(
                "literal `{}` is not supported",
                excerpt(&other.to_string())
            ));
        }
    })
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
        assert!(err("valu > 3").ends_with("; did you mean `value`?"));
        assert!(
            err("sensor_id > 3").contains("cannot compare `sensor_id` (Utf8) with `3` (Int64)")
        );
        assert!(err("value AND is_anomaly").contains("needs true/false"));
        assert!(err("sqrt(value) > 1").contains("unknown function"));
        assert!(err("value > ").contains("cannot parse"));
        assert!(err("value > 1 extra").contains("cannot parse"));
        assert!(err("(SELECT 1)").contains("not supported"));
    }

    /// Runs `f` on a thread with a small stack, as a tokio worker or a transform thread
    /// might have: whatever the expression, compiling must not need more.
    fn on_small_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn_scoped(s, f)
                .unwrap()
                .join()
                .unwrap()
        })
    }

    /// `item` repeated with `sep` until the text reaches `bytes`.
    fn repeated(item: impl Fn(usize) -> String, sep: &str, bytes: usize) -> String {
        let mut text = item(0);
        let mut i = 1;
        loop {
            let next = format!("{sep}{}", item(i));
            if text.len() + next.len() > bytes {
                return text;
            }
            text.push_str(&next);
            i += 1;
        }
    }

    #[test]
    fn long_chains_and_lists_are_flat_and_evaluate_like_sql() {
        let b = batch();
        // 2,000 ORs (the text limit's worth), and an IN list as long.
        let or_chain = repeated(
            |i| format!("ts = {}", i % 3 + 2),
            " OR ",
            MAX_EXPRESSION_BYTES,
        );
        let in_list = format!(
            "ts IN ({})",
            repeated(|i| format!("{}", i % 3 + 2), ", ", 16_000)
        );
        let and_chain = repeated(
            |_| "value IS NOT NULL".to_string(),
            " AND ",
            MAX_EXPRESSION_BYTES,
        );
        for (text, expected) in [
            (or_chain.as_str(), [false, true, true, true]),
            (in_list.as_str(), [false, true, true, true]),
            (and_chain.as_str(), [true, true, false, true]),
        ] {
            let e = on_small_stack(|| Expression::compile(text, &b.schema())).unwrap();
            let got = on_small_stack(|| e.evaluate(&b)).unwrap();
            let got: Vec<bool> = as_bool(&got)
                .unwrap()
                .iter()
                .map(|v| v == Some(true))
                .collect();
            assert_eq!(got, expected, "{}", excerpt(text));
        }
        // Kleene logic is kept: NULL OR TRUE is true, NULL OR FALSE is NULL.
        assert_eq!(
            rows("value > 100 OR ts = 3 OR FALSE"),
            t([Some(false), Some(false), Some(true), Some(false)])
        );
        assert_eq!(
            rows("value IN (2, NULL)"),
            t([None, Some(true), None, None])
        );
        assert_eq!(
            rows("ts NOT IN (1, 4.0)"),
            t([Some(false), Some(true), Some(true), Some(false)])
        );
    }

    #[test]
    fn no_expression_can_exhaust_the_stack() {
        let b = batch();
        let max = MAX_EXPRESSION_BYTES;
        // Every shape that nests with the length of the text, at the largest size
        // accepted: each is compiled (or refused) without recursing with its length.
        let shapes = [
            repeated(|_| "1".to_string(), " + ", max),
            repeated(|_| "ts".to_string(), "=", max),
            format!("ts{}", " IS NULL".repeat((max - 2) / 8)),
            format!("{}ts", "NOT ".repeat((max - 2) / 4)),
            format!("{}1", "-".repeat(max - 1)),
            format!("{}ts{}", "(".repeat(max / 2 - 1), ")".repeat(max / 2 - 1)),
            format!(
                "abs({}ts{}",
                "abs(".repeat(max / 5 - 2),
                ")".repeat(max / 5 - 1)
            ),
            repeated(|_| "value".to_string(), " BETWEEN 1 AND ", max),
            repeated(|_| "sensor_id".to_string(), " LIKE ", max),
        ];
        for text in &shapes {
            assert!(text.len() <= max);
            let result = on_small_stack(|| Expression::compile(text, &b.schema()).map(|_| ()));
            if let Err(e) = result {
                assert!(e.len() < 1000, "the error quotes too much: {e}");
            }
        }
        let deep = repeated(|_| "ts".to_string(), " + ", 1000);
        let err = Expression::compile(&format!("{deep} > 0"), &b.schema()).unwrap_err();
        assert!(err.contains("nested more than 64 levels"), "{err}");
    }

    #[test]
    fn oversized_expressions_are_refused_and_not_quoted_whole() {
        let b = batch();
        let text = repeated(|i| format!("ts = {i}"), " OR ", 40_000);
        let err = Expression::compile(&text, &b.schema()).unwrap_err();
        assert!(err.contains("at most 16384"), "{err}");
        assert!(err.len() < 400, "{err}");
        let unknown = format!("{} > 1", "x".repeat(10_000));
        let err = Expression::compile(&unknown, &b.schema()).unwrap_err();
        assert!(err.contains("unknown field") && err.len() < 1000, "{err}");
    }
}
