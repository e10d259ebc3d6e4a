//! Learning-rate (and other) schedules as functions of the step.

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// A learning-rate schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    /// The same value at every step.
    Constant {
        /// The value.
        value: f32,
    },
    /// `values[i]` from step `boundaries[i-1]` on (the paper's CIFAR-10 schedule is values
    /// 0.1, 0.01, 0.001 with boundaries 40000, 60000).
    Piecewise {
        /// Steps where the value changes, increasing.
        boundaries: Vec<u64>,
        /// One more value than boundaries.
        values: Vec<f32>,
    },
    /// One cycle (Smith 2018): linear from `max/div` up to `max` over the first `warmup`
    /// fraction of `total` steps, then linear down to 0 at `total`.
    OneCycle {
        /// Peak value.
        max: f32,
        /// Total steps of the cycle.
        total: u64,
        /// Fraction of `total` spent rising, in (0, 1).
        warmup: f32,
        /// Initial value is `max / div`.
        div: f32,
    },
}

impl Schedule {
    /// The value at `step` (0-based).
    pub fn at(&self, step: u64) -> f32 {
        match self {
            Schedule::Constant { value } => *value,
            Schedule::Piecewise { boundaries, values } => {
                let i = boundaries.iter().take_while(|&&b| step >= b).count();
                values[i.min(values.len() - 1)]
            }
            Schedule::OneCycle {
                max,
                total,
                warmup,
                div,
            } => {
                let t = step as f64 / (*total).max(1) as f64;
                let w = *warmup as f64;
                let lo = (*max / *div) as f64;
                let v = if t < w {
                    lo + (*max as f64 - lo) * t / w
                } else {
                    (*max as f64 * (1.0 - (t - w) / (1.0 - w))).max(0.0)
                };
                v as f32
            }
        }
    }

    /// The schedule of a run of `to` steps shaped as this one is over `from` steps: a one-cycle
    /// `total` and the piecewise boundaries scaled by `to / from` (rounded to the nearest step;
    /// a constant is unchanged). For `saddle train --steps N --stretch-schedule`, so that a
    /// shorter run still ends its cycle (or reaches its last value) instead of being cut.
    pub fn stretched(&self, from: u64, to: u64) -> Schedule {
        let scale = |v: u64| -> u64 {
            ((v as u128 * to as u128 + from.max(1) as u128 / 2) / from.max(1) as u128) as u64
        };
        match self {
            Schedule::Constant { .. } => self.clone(),
            Schedule::Piecewise { boundaries, values } => Schedule::Piecewise {
                boundaries: boundaries.iter().map(|&b| scale(b)).collect(),
                values: values.clone(),
            },
            Schedule::OneCycle {
                max,
                total,
                warmup,
                div,
            } => Schedule::OneCycle {
                max: *max,
                total: scale(*total).max(1),
                warmup: *warmup,
                div: *div,
            },
        }
    }

    /// Checks the schedule's parameters.
    ///
    /// # Errors
    /// [`TrainError::Config`] naming the problem.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Config(m));
        match self {
            Schedule::Constant { value } if !(value.is_finite() && *value >= 0.0) => bad(format!(
                "learning rate {value} must be finite and non-negative"
            )),
            Schedule::Piecewise { boundaries, values } => {
                if values.len() != boundaries.len() + 1 {
                    return bad(format!(
                        "a piecewise schedule needs one more value than boundaries ({} values, {} boundaries)",
                        values.len(),
                        boundaries.len()
                    ));
                }
                if boundaries.windows(2).any(|w| w[0] >= w[1]) {
                    return bad("piecewise boundaries must increase".into());
                }
                if values.iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
                    return bad("piecewise values must be finite and non-negative".into());
                }
                Ok(())
            }
            Schedule::OneCycle {
                max,
                total,
                warmup,
                div,
            } => {
                let valid = max.is_finite()
                    && *max > 0.0
                    && *total > 0
                    && *warmup > 0.0
                    && *warmup < 1.0
                    && div.is_finite()
                    && *div >= 1.0;
                if !valid {
                    return bad(format!(
                        "one-cycle needs max > 0, total > 0, 0 < warmup < 1 and div ≥ 1 (got max {max}, total {total}, warmup {warmup}, div {div})"
                    ));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stretched_schedule_keeps_its_shape_over_the_new_length() {
        // A one-cycle over 6,000 steps (cifar-quick's until session 18), stretched to 1,800: the
        // same values at the same fractions of the run (exactly where the fraction lands on a
        // step of both).
        let c = Schedule::OneCycle {
            max: 0.2,
            total: 6000,
            warmup: 0.4,
            div: 25.0,
        };
        let s = c.stretched(6000, 1800);
        assert_eq!(
            s,
            Schedule::OneCycle {
                max: 0.2,
                total: 1800,
                warmup: 0.4,
                div: 25.0
            }
        );
        for (a, b) in [(0, 0), (2400, 720), (3000, 900), (6000, 1800)] {
            assert!((c.at(a) - s.at(b)).abs() < 1e-6, "{a} {b}");
        }
        // The paper's piecewise schedule at a tenth of its length; a constant is unchanged.
        let paper = Schedule::Piecewise {
            boundaries: vec![40000, 60000],
            values: vec![0.1, 0.01, 0.001],
        };
        let p = paper.stretched(80_000, 8_000);
        assert_eq!(
            p,
            Schedule::Piecewise {
                boundaries: vec![4000, 6000],
                values: vec![0.1, 0.01, 0.001]
            }
        );
        let k = Schedule::Constant { value: 0.3 };
        assert_eq!(k.stretched(10, 3), k);
        // Rounded to the nearest step, never a cycle of 0 steps.
        assert!(matches!(
            c.stretched(6000, 1),
            Schedule::OneCycle { total: 1, .. }
        ));
    }

    #[test]
    fn piecewise_is_the_paper_cifar_schedule() {
        let s = Schedule::Piecewise {
            boundaries: vec![40000, 60000],
            values: vec![0.1, 0.01, 0.001],
        };
        s.validate().unwrap();
        assert_eq!(s.at(0), 0.1);
        assert_eq!(s.at(39999), 0.1);
        assert_eq!(s.at(40000), 0.01);
        assert_eq!(s.at(60000), 0.001);
        assert_eq!(s.at(1 << 40), 0.001);
    }

    #[test]
    fn one_cycle_rises_then_falls_to_zero() {
        let s = Schedule::OneCycle {
            max: 1.0,
            total: 100,
            warmup: 0.25,
            div: 10.0,
        };
        s.validate().unwrap();
        assert!((s.at(0) - 0.1).abs() < 1e-6);
        assert!((s.at(25) - 1.0).abs() < 1e-6);
        assert!(s.at(10) < s.at(20));
        assert!(s.at(60) > s.at(80));
        assert!(s.at(100).abs() < 1e-6);
        assert!(s.at(1000).abs() < 1e-6);
    }

    #[test]
    fn invalid_schedules_are_errors() {
        assert!(Schedule::Piecewise {
            boundaries: vec![5],
            values: vec![0.1]
        }
        .validate()
        .is_err());
        assert!(Schedule::Piecewise {
            boundaries: vec![5, 3],
            values: vec![1.0, 0.1, 0.01]
        }
        .validate()
        .is_err());
        assert!(Schedule::Constant { value: f32::NAN }.validate().is_err());
        assert!(Schedule::OneCycle {
            max: 1.0,
            total: 0,
            warmup: 0.3,
            div: 10.0
        }
        .validate()
        .is_err());
    }
}
