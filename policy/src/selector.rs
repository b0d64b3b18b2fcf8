//! The Calico selector language, used by pool node selectors, BGP peer selectors and policies.
//!
//! Grammar (lowest precedence first):
//!
//! ```text
//! expr    := and ( "||" and )*
//! and     := unary ( "&&" unary )*
//! unary   := "!" unary | "(" expr ")" | term
//! term    := "all()" | "has(" key ")"
//!          | key ("==" | "!=") string
//!          | key ["not"] "in" "{" [string ("," string)*] "}"
//!          | key ("contains" | "starts with" | "ends with") string
//! string  := '"' chars '"' | "'" chars "'"
//! ```
//!
//! `k != "v"` and `k not in {...}` are true when the label is absent, as in Calico. An empty
//! selector means `all()`.
//!
//! Selectors come from policy authors, so size is bounded: `&&` and `||` chains are flat
//! lists (thousands of `matchLabels` make one `AllOf`, not a thousand-deep tree), nesting of
//! `(` and `!` is limited to [`MAX_DEPTH`], and the text to [`MAX_SELECTOR_LEN`] bytes. Every
//! recursive walk (matching, printing, dropping) is therefore shallow.

use std::collections::BTreeMap;
use std::fmt;

/// Labels of the object a selector is matched against.
pub type Labels = BTreeMap<String, String>;

/// The deepest nesting of parentheses and `!` a selector may have.
pub const MAX_DEPTH: usize = 64;
/// The longest selector text accepted, in bytes (room for thousands of label terms).
pub const MAX_SELECTOR_LEN: usize = 256 * 1024;

/// A parsed selector; `Display` prints the canonical form (used for hashing into set names).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Selector {
    /// Matches everything (`all()` or the empty selector).
    All,
    /// `has(key)`.
    Has(String),
    /// `key == "value"`.
    Equal(String, String),
    /// `key != "value"`, also true when the label is absent.
    NotEqual(String, String),
    /// `key in {...}`.
    In(String, Vec<String>),
    /// `key not in {...}`, also true when the label is absent.
    NotIn(String, Vec<String>),
    /// `key contains "s"`.
    Contains(String, String),
    /// `key starts with "s"`.
    StartsWith(String, String),
    /// `key ends with "s"`.
    EndsWith(String, String),
    /// `!expr`.
    Not(Box<Selector>),
    /// `a && b && ...` (two or more, none itself an `AllOf`).
    AllOf(Vec<Selector>),
    /// `a || b || ...` (two or more, none itself an `AnyOf`).
    AnyOf(Vec<Selector>),
}

/// Why a selector did not parse: where, and what was expected there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {input:?} at character {position}: {message}")]
pub struct SelectorError {
    /// The selector text as given.
    pub input: String,
    /// Zero-based character offset of the problem.
    pub position: usize,
    /// What was wrong or expected.
    pub message: String,
}

impl Selector {
    /// `a && b`, flattened (and `all()` dropped) so chains never nest.
    pub fn and(a: Selector, b: Selector) -> Selector {
        match (a, b) {
            (Selector::All, x) | (x, Selector::All) => x,
            (Selector::AllOf(mut xs), Selector::AllOf(ys)) => {
                xs.extend(ys);
                Selector::AllOf(xs)
            }
            (Selector::AllOf(mut xs), y) => {
                xs.push(y);
                Selector::AllOf(xs)
            }
            (x, Selector::AllOf(mut ys)) => {
                ys.insert(0, x);
                Selector::AllOf(ys)
            }
            (x, y) => Selector::AllOf(vec![x, y]),
        }
    }

    /// Parses selector text; the empty string means `all()`.
    pub fn parse(input: &str) -> Result<Selector, SelectorError> {
        if input.len() > MAX_SELECTOR_LEN {
            return Err(SelectorError {
                input: input.chars().take(80).collect::<String>() + "...",
                position: 0,
                message: format!(
                    "the selector is {} bytes; at most {MAX_SELECTOR_LEN} are accepted",
                    input.len()
                ),
            });
        }
        let mut parser = Parser {
            input,
            pos: 0,
            depth: 0,
        };
        parser.skip_ws();
        if parser.at_end() {
            return Ok(Selector::All);
        }
        let selector = parser.expr()?;
        parser.skip_ws();
        if !parser.at_end() {
            return Err(parser.error("unexpected text after the end of the expression"));
        }
        Ok(selector)
    }

    /// The same selector over keys with `prefix` in front (a service account selector reads
    /// the account's labels, which endpoints carry as `pcsa.<key>`, as Calico names them).
    pub fn with_key_prefix(&self, prefix: &str) -> Selector {
        let k = |key: &String| format!("{prefix}{key}");
        match self {
            Selector::All => Selector::All,
            Selector::Has(key) => Selector::Has(k(key)),
            Selector::Equal(key, v) => Selector::Equal(k(key), v.clone()),
            Selector::NotEqual(key, v) => Selector::NotEqual(k(key), v.clone()),
            Selector::In(key, vs) => Selector::In(k(key), vs.clone()),
            Selector::NotIn(key, vs) => Selector::NotIn(k(key), vs.clone()),
            Selector::Contains(key, v) => Selector::Contains(k(key), v.clone()),
            Selector::StartsWith(key, v) => Selector::StartsWith(k(key), v.clone()),
            Selector::EndsWith(key, v) => Selector::EndsWith(k(key), v.clone()),
            Selector::Not(inner) => Selector::Not(Box::new(inner.with_key_prefix(prefix))),
            Selector::AllOf(xs) => {
                Selector::AllOf(xs.iter().map(|x| x.with_key_prefix(prefix)).collect())
            }
            Selector::AnyOf(xs) => {
                Selector::AnyOf(xs.iter().map(|x| x.with_key_prefix(prefix)).collect())
            }
        }
    }

    /// Evaluates the selector against one object's labels.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.matches_with(&|k: &str| labels.get(k).map(String::as_str))
    }

    /// Evaluates the selector against labels looked up by `get`, so a caller can add a label
    /// (the namespace's, for pods) without copying the object's map for every evaluation.
    pub fn matches_with<'a>(&self, get: &dyn Fn(&str) -> Option<&'a str>) -> bool {
        match self {
            Selector::All => true,
            Selector::Has(k) => get(k).is_some(),
            Selector::Equal(k, v) => get(k) == Some(v.as_str()),
            Selector::NotEqual(k, v) => get(k) != Some(v.as_str()),
            Selector::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Selector::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Selector::Contains(k, s) => get(k).is_some_and(|x| x.contains(s.as_str())),
            Selector::StartsWith(k, s) => get(k).is_some_and(|x| x.starts_with(s.as_str())),
            Selector::EndsWith(k, s) => get(k).is_some_and(|x| x.ends_with(s.as_str())),
            Selector::Not(inner) => !inner.matches_with(get),
            Selector::AllOf(xs) => xs.iter().all(|x| x.matches_with(get)),
            Selector::AnyOf(xs) => xs.iter().any(|x| x.matches_with(get)),
        }
    }
}

fn write_list(f: &mut fmt::Formatter<'_>, values: &[String]) -> fmt::Result {
    f.write_str("{")?;
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{v:?}")?;
    }
    f.write_str("}")
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::All => f.write_str("all()"),
            Selector::Has(k) => write!(f, "has({k})"),
            Selector::Equal(k, v) => write!(f, "{k} == {v:?}"),
            Selector::NotEqual(k, v) => write!(f, "{k} != {v:?}"),
            Selector::In(k, vs) => {
                write!(f, "{k} in ")?;
                write_list(f, vs)
            }
            Selector::NotIn(k, vs) => {
                write!(f, "{k} not in ")?;
                write_list(f, vs)
            }
            Selector::Contains(k, s) => write!(f, "{k} contains {s:?}"),
            Selector::StartsWith(k, s) => write!(f, "{k} starts with {s:?}"),
            Selector::EndsWith(k, s) => write!(f, "{k} ends with {s:?}"),
            // Lists print their own parentheses and a term binds tighter than `!`, so no
            // extra parentheses: the printed form nests exactly as deep as the parsed one.
            Selector::Not(inner) => write!(f, "!{inner}"),
            Selector::AllOf(xs) | Selector::AnyOf(xs) => {
                let op = if matches!(self, Selector::AllOf(_)) {
                    " && "
                } else {
                    " || "
                };
                f.write_str("(")?;
                for (i, x) in xs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(op)?;
                    }
                    write!(f, "{x}")?;
                }
                f.write_str(")")
            }
        }
    }
}

struct Parser<'a> {
    input: &'a str,
    pos: usize,
    /// Current nesting of `(` and `!`.
    depth: usize,
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.input[self.pos..]
    }

    fn at_end(&self) -> bool {
        self.pos >= self.input.len()
    }

    fn skip_ws(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.input.len() - trimmed.len();
    }

    fn error(&self, message: &str) -> SelectorError {
        SelectorError {
            input: self.input.to_string(),
            position: self.input[..self.pos].chars().count(),
            message: message.to_string(),
        }
    }

    /// Consumes `token` (after whitespace) if it is next.
    fn eat(&mut self, token: &str) -> bool {
        self.skip_ws();
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    /// Consumes a keyword only when it is not the start of a longer identifier.
    fn eat_word(&mut self, word: &str) -> bool {
        self.skip_ws();
        let rest = self.rest();
        if rest.starts_with(word) && !rest[word.len()..].starts_with(is_key_char) {
            self.pos += word.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, token: &str) -> Result<(), SelectorError> {
        if self.eat(token) {
            Ok(())
        } else {
            Err(self.error(&format!("expected {token:?}")))
        }
    }

    fn expr(&mut self) -> Result<Selector, SelectorError> {
        let mut any = vec![self.and()?];
        while self.eat("||") {
            any.push(self.and()?);
        }
        Ok(if any.len() == 1 {
            any.pop().expect("one element")
        } else {
            // `(a || b) || c` is one list, so the canonical form reparses to the same value.
            Selector::AnyOf(
                any.into_iter()
                    .flat_map(|x| match x {
                        Selector::AnyOf(xs) => xs,
                        x => vec![x],
                    })
                    .collect(),
            )
        })
    }

    fn and(&mut self) -> Result<Selector, SelectorError> {
        let mut all = self.unary()?;
        while self.eat("&&") {
            let next = self.unary()?;
            all = match all {
                // Keep `all()` terms as written, so printing and parsing agree.
                Selector::AllOf(mut xs) => {
                    match next {
                        Selector::AllOf(ys) => xs.extend(ys),
                        y => xs.push(y),
                    }
                    Selector::AllOf(xs)
                }
                x => match next {
                    Selector::AllOf(mut ys) => {
                        ys.insert(0, x);
                        Selector::AllOf(ys)
                    }
                    y => Selector::AllOf(vec![x, y]),
                },
            };
        }
        Ok(all)
    }

    /// Enters one level of `(` or `!`, refusing to go deeper than [`MAX_DEPTH`].
    fn deeper(&mut self) -> Result<(), SelectorError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error(&format!(
                "nesting of parentheses and '!' is deeper than {MAX_DEPTH}"
            )));
        }
        Ok(())
    }

    fn unary(&mut self) -> Result<Selector, SelectorError> {
        self.skip_ws();
        if self.rest().starts_with("!=") {
            return Err(self.error("expected a label name before \"!=\""));
        }
        if self.eat("!") {
            self.deeper()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Selector::Not(Box::new(inner)));
        }
        if self.eat("(") {
            self.deeper()?;
            let inner = self.expr()?;
            self.expect(")")?;
            self.depth -= 1;
            return Ok(inner);
        }
        self.term()
    }

    fn key(&mut self) -> Result<String, SelectorError> {
        self.skip_ws();
        let len = self
            .rest()
            .find(|c: char| !is_key_char(c))
            .unwrap_or(self.rest().len());
        if len == 0 {
            return Err(self.error("expected a label name, all() or has(...)"));
        }
        let key = self.rest()[..len].to_string();
        self.pos += len;
        Ok(key)
    }

    fn string(&mut self) -> Result<String, SelectorError> {
        self.skip_ws();
        let quote = match self.rest().chars().next() {
            Some(q @ ('"' | '\'')) => q,
            _ => return Err(self.error("expected a quoted string")),
        };
        let body = &self.rest()[1..];
        let Some(end) = body.find(quote) else {
            return Err(self.error("unterminated string"));
        };
        let value = body[..end].to_string();
        self.pos += end + 2;
        Ok(value)
    }

    fn string_set(&mut self) -> Result<Vec<String>, SelectorError> {
        self.expect("{")?;
        let mut values = Vec::new();
        if self.eat("}") {
            return Ok(values);
        }
        loop {
            values.push(self.string()?);
            if self.eat("}") {
                return Ok(values);
            }
            self.expect(",")?;
        }
    }

    fn term(&mut self) -> Result<Selector, SelectorError> {
        self.skip_ws();
        if self.eat_word("all") {
            self.expect("(")?;
            self.expect(")")?;
            return Ok(Selector::All);
        }
        if self.rest().starts_with("global(") {
            return Err(self.error("global() is only valid in a namespaceSelector"));
        }
        if self.eat_word("has") {
            self.expect("(")?;
            let key = self.key()?;
            self.expect(")")?;
            return Ok(Selector::Has(key));
        }
        let key = self.key()?;
        if self.eat("==") {
            return Ok(Selector::Equal(key, self.string()?));
        }
        if self.eat("!=") {
            return Ok(Selector::NotEqual(key, self.string()?));
        }
        if self.eat_word("not") {
            if !self.eat_word("in") {
                return Err(self.error("expected \"in\" after \"not\""));
            }
            return Ok(Selector::NotIn(key, self.string_set()?));
        }
        if self.eat_word("in") {
            return Ok(Selector::In(key, self.string_set()?));
        }
        if self.eat_word("contains") {
            return Ok(Selector::Contains(key, self.string()?));
        }
        if self.eat_word("starts") {
            if !self.eat_word("with") {
                return Err(self.error("expected \"with\" after \"starts\""));
            }
            return Ok(Selector::StartsWith(key, self.string()?));
        }
        if self.eat_word("ends") {
            if !self.eat_word("with") {
                return Err(self.error("expected \"with\" after \"ends\""));
            }
            return Ok(Selector::EndsWith(key, self.string()?));
        }
        Err(self.error(
            "expected ==, !=, in, not in, contains, starts with or ends with after the label name",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn check(sel: &str, pairs: &[(&str, &str)]) -> bool {
        Selector::parse(sel).unwrap().matches(&labels(pairs))
    }

    #[test]
    fn operators_follow_calico_semantics() {
        let l = [("app", "web"), ("tier", "frontend")];
        assert!(check("", &l));
        assert!(check("all()", &[]));
        assert!(check("app == 'web'", &l));
        assert!(!check("app == \"db\"", &l));
        assert!(check("app != 'db'", &l));
        assert!(check("missing != 'x'", &l), "!= is true on absent labels");
        assert!(check("app in {'a', 'web'}", &l));
        assert!(!check("missing in {'a'}", &l));
        assert!(check("missing not in {'a'}", &l));
        assert!(!check("app not in {'web'}", &l));
        assert!(check("has(tier)", &l));
        assert!(check("!has(missing)", &l));
        assert!(check("tier contains 'ront'", &l));
        assert!(check("tier starts with 'front'", &l));
        assert!(check("tier ends with 'end'", &l));
        assert!(check("app == 'x' || tier == 'frontend'", &l));
        assert!(!check("app == 'web' && tier == 'backend'", &l));
        assert!(check("!(app == 'x' || app == 'y') && has(app)", &l));
        assert!(check(
            "kubernetes.io/hostname == 'n1'",
            &[("kubernetes.io/hostname", "n1")]
        ));
        assert!(!check("app in {}", &l));
    }

    #[test]
    fn and_binds_tighter_than_or() {
        // a || b && c  ==  a || (b && c)
        assert!(check("has(a) || has(b) && has(c)", &[("a", "")]));
        assert!(!check("(has(a) || has(b)) && has(c)", &[("a", "")]));
    }

    #[test]
    fn errors_say_where_and_what() {
        let e = Selector::parse("app == web").unwrap_err();
        assert_eq!(e.position, 7);
        assert!(e.message.contains("quoted string"), "{e}");
        let e = Selector::parse("app = 'web'").unwrap_err();
        assert!(e.message.contains("=="), "{e}");
        assert!(Selector::parse("has(app").is_err());
        assert!(Selector::parse("app == 'x' extra").is_err());
        assert!(Selector::parse("app == 'unterminated").is_err());
        assert!(
            Selector::parse("global()")
                .unwrap_err()
                .message
                .contains("namespaceSelector")
        );
        assert!(Selector::parse("app not 'x'").is_err());
        assert!(Selector::parse("&& a == 'b'").is_err());
    }

    #[test]
    fn hostile_selectors_are_refused_with_a_clear_error_not_a_stack_overflow() {
        for text in [
            "(".repeat(100_000) + "all()" + &")".repeat(100_000),
            "!".repeat(100_000) + "has(a)",
            "(((((".repeat(20_000),
        ] {
            let e = Selector::parse(&text).unwrap_err();
            assert!(e.message.contains("deeper than 64"), "{e}");
        }
        let e = Selector::parse(&"a == 'b' && ".repeat(30_000)).unwrap_err();
        assert!(e.message.contains("at most"), "{}", e.message);
        // Nesting up to the limit is fine, and its canonical form reparses.
        for ok in [
            "(".repeat(MAX_DEPTH) + "has(a)" + &")".repeat(MAX_DEPTH),
            "!(a == 'x' || ".repeat(MAX_DEPTH / 2) + "has(b)" + &")".repeat(MAX_DEPTH / 2),
            "!".repeat(MAX_DEPTH) + "k in {'v'}",
        ] {
            let sel = Selector::parse(&ok).unwrap();
            assert_eq!(Selector::parse(&sel.to_string()).unwrap(), sel, "{sel}");
        }
    }

    #[test]
    fn thousands_of_terms_are_one_flat_list() {
        let text = (0..5000)
            .map(|i| format!("k{i} == 'v'"))
            .collect::<Vec<_>>()
            .join(" && ");
        let sel = Selector::parse(&text).unwrap();
        let Selector::AllOf(terms) = &sel else {
            panic!("{sel:?}")
        };
        assert_eq!(terms.len(), 5000);
        let labels: Labels = (0..5000).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(sel.matches(&labels));
        // Built term by term (as from matchLabels) it is the same flat list, and it prints
        // and reparses without nesting.
        let built = (0..5000).fold(Selector::All, |acc, i| {
            Selector::and(acc, Selector::Equal(format!("k{i}"), "v".into()))
        });
        assert_eq!(built, sel);
        assert_eq!(Selector::parse(&built.to_string()).unwrap(), sel);
    }

    #[test]
    fn canonical_form_reparses_to_the_same_selector() {
        for text in [
            "all()",
            "a == 'x' && (b in {'1','2'} || !has(c))",
            "a not in {} || d starts with \"p\" && e ends with 'q' || f contains 'r'",
            "k != 'v'",
        ] {
            let sel = Selector::parse(text).unwrap();
            assert_eq!(Selector::parse(&sel.to_string()).unwrap(), sel, "{sel}");
        }
    }
}
