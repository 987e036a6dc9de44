//! Fault injection shared by both fakes: `SYMBOL@N=CODE` (the N-th call, 1-based, of an
//! exported symbol returns CODE without doing anything) and `SYMBOL@*=CODE` (every call),
//! comma separated, read from `FAKE_CUDA_FAIL` / `FAKE_NVML_FAIL`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Which calls of a symbol fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Only the N-th call (1-based).
    Nth(u64),
    /// Every call.
    Always,
}

/// One `SYMBOL@WHEN=CODE` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Exported symbol name, e.g. `cuMemAlloc_v2`.
    pub symbol: String,
    /// Which calls fail.
    pub when: When,
    /// The code those calls return.
    pub code: i64,
}

/// Parses a rule list; malformed rules are reported in the error list and skipped.
pub fn parse_rules(text: &str) -> (Vec<Rule>, Vec<String>) {
    let mut rules = Vec::new();
    let mut bad = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match parse_rule(item) {
            Some(r) => rules.push(r),
            None => bad.push(item.to_string()),
        }
    }
    (rules, bad)
}

fn parse_int(text: &str) -> Option<i64> {
    let text = text.trim();
    let (neg, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let v = match body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        Some(hex) => i64::from_str_radix(hex, 16).ok()?,
        None => body.parse::<i64>().ok()?,
    };
    Some(if neg { -v } else { v })
}

fn parse_rule(item: &str) -> Option<Rule> {
    let (lhs, code) = item.split_once('=')?;
    let (symbol, when) = lhs.split_once('@')?;
    let symbol = symbol.trim();
    if symbol.is_empty() {
        return None;
    }
    let when = match when.trim() {
        "*" => When::Always,
        n => match n.parse::<u64>().ok()? {
            0 => return None,
            n => When::Nth(n),
        },
    };
    Some(Rule {
        symbol: symbol.to_string(),
        when,
        code: parse_int(code)?,
    })
}

#[derive(Debug)]
struct Counter {
    symbol: String,
    calls: AtomicU64,
    rules: Vec<(When, i64)>,
}

/// Parsed rules plus a call counter for every symbol that has a rule.
#[derive(Debug)]
pub struct FaultPlan {
    counters: Vec<Counter>,
}

impl FaultPlan {
    /// A plan from a rule list.
    pub fn new(rules: Vec<Rule>) -> Self {
        let mut counters: Vec<Counter> = Vec::new();
        for r in rules {
            match counters.iter_mut().find(|c| c.symbol == r.symbol) {
                Some(c) => c.rules.push((r.when, r.code)),
                None => counters.push(Counter {
                    symbol: r.symbol,
                    calls: AtomicU64::new(0),
                    rules: vec![(r.when, r.code)],
                }),
            }
        }
        Self { counters }
    }

    /// A plan from the environment variable `var`; bad rules are reported on stderr.
    pub fn from_env(var: &str) -> Self {
        let text = std::env::var(var).unwrap_or_default();
        let (rules, bad) = parse_rules(&text);
        for b in bad {
            eprintln!("fake-gpu: ignoring malformed {var} rule {b:?}");
        }
        Self::new(rules)
    }

    /// Counts one call of `symbol` and returns the code to fail it with, if any.
    pub fn check(&self, symbol: &str) -> Option<i64> {
        let c = self.counters.iter().find(|c| c.symbol == symbol)?;
        let n = c.calls.fetch_add(1, Ordering::Relaxed) + 1;
        c.rules.iter().find_map(|&(when, code)| match when {
            When::Always => Some(code),
            When::Nth(k) if k == n => Some(code),
            When::Nth(_) => None,
        })
    }

    /// Whether the plan has no rules at all.
    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let (rules, bad) = parse_rules("cuMemAlloc_v2@2=2, cuInit@*=100,x@0=1,bad,y@1=0x1f4");
        assert_eq!(bad, vec!["x@0=1".to_string(), "bad".to_string()]);
        assert_eq!(
            rules,
            vec![
                Rule {
                    symbol: "cuMemAlloc_v2".into(),
                    when: When::Nth(2),
                    code: 2
                },
                Rule {
                    symbol: "cuInit".into(),
                    when: When::Always,
                    code: 100
                },
                Rule {
                    symbol: "y".into(),
                    when: When::Nth(1),
                    code: 500
                },
            ]
        );
    }

    #[test]
    fn counts_calls() {
        let (rules, _) = parse_rules("a@2=2,a@4=7,b@*=3");
        let plan = FaultPlan::new(rules);
        assert_eq!(plan.check("a"), None);
        assert_eq!(plan.check("a"), Some(2));
        assert_eq!(plan.check("a"), None);
        assert_eq!(plan.check("a"), Some(7));
        assert_eq!(plan.check("a"), None);
        assert_eq!(plan.check("b"), Some(3));
        assert_eq!(plan.check("b"), Some(3));
        assert_eq!(plan.check("c"), None);
        assert!(!plan.is_empty());
    }
}
