//! Type-checking a parsed expression against the input schema into the tree that
//! evaluation walks.

use std::sync::Arc;

use arrow_array::{BooleanArray, Float64Array, Int64Array, StringArray, new_null_array};
use arrow_schema::{DataType, Schema};
use sqlparser::ast::{
    self, BinaryOperator, Expr as Sql, FunctionArg, FunctionArgExpr, FunctionArguments, InTarget,
    UnaryOperator,
};

use super::{ArithOp, CmpOp, MAX_DEPTH, Node, excerpt};

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

pub(super) struct Compiler<'s> {
    pub(super) schema: &'s Schema,
    /// Nesting of the node being compiled.
    pub(super) depth: std::cell::Cell<usize>,
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
    pub(super) fn compile(&self, e: &Sql) -> Result<Typed, String> {
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
