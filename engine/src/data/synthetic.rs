//! The synthetic domain: integer addition with checkable answers, "123+45=168" per line.
//! Generated, not shipped: the same seed gives the same lines on every machine.

use serde::{Deserialize, Serialize};

use super::rng::Rng;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArithmeticConfig {
    /// Largest number of digits of each operand.
    #[serde(default = "default_digits")]
    pub max_digits: u32,
    /// Lines generated (train and validation together).
    #[serde(default = "default_lines")]
    pub lines: usize,
    #[serde(default)]
    pub seed: u64,
}

fn default_digits() -> u32 {
    3
}
fn default_lines() -> usize {
    40_000
}

/// One problem: the prompt ("a+b=") and its answer ("c").
pub fn problem(rng: &mut Rng, max_digits: u32) -> (String, String) {
    let mut operand = || {
        let digits = 1 + rng.below(max_digits as u64) as u32;
        rng.below(10u64.pow(digits))
    };
    let (a, b) = (operand(), operand());
    (format!("{a}+{b}="), format!("{}", a + b))
}

/// The corpus text: one problem and its answer per line.
pub fn arithmetic_text(config: &ArithmeticConfig) -> String {
    let mut rng = Rng::new(config.seed ^ 0xA11CE);
    let mut text = String::with_capacity(config.lines * 12);
    for _ in 0..config.lines {
        let (prompt, answer) = problem(&mut rng, config.max_digits);
        text.push_str(&prompt);
        text.push_str(&answer);
        text.push('\n');
    }
    text
}
