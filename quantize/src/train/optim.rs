//! The optimizer and the learning-rate schedule of `finetune`, with state that a checkpoint can
//! hold, so that `--resume` continues with the same moments and step count (llama.cpp's
//! optimizer keeps them private, which is why a resumed run used to start AdamW from zero).
//!
//! AdamW is the decoupled-weight-decay Adam of Loshchilov & Hutter, the optimizer of every
//! LoRA recipe users bring (PEFT, TRL, axolotl, Unsloth): β₁ 0.9, β₂ 0.999, ε 1e-8, bias
//! correction, weight decay applied to the weights directly (not through the gradient). SGD is
//! plain `p -= lr·g`. The update runs on detached tensors (no graph is recorded), and the
//! moments are kept per parameter name, so that a checkpoint is a flat name → tensor map.

use std::collections::HashMap;

use candle_core::{Result, Tensor, Var};
use inhouse_formats::gguf_write::SplitMix64;

/// Which optimizer updates the parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// AdamW with decoupled weight decay.
    AdamW,
    /// Stochastic gradient descent.
    Sgd,
}

impl Method {
    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Method::AdamW => "adamw",
            Method::Sgd => "sgd",
        }
    }

    /// Parses a command-line name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "adamw" => Some(Method::AdamW),
            "sgd" => Some(Method::Sgd),
            _ => None,
        }
    }
}

/// AdamW's constants.
#[derive(Debug, Clone, Copy)]
pub struct Hyper {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the root of the second moment.
    pub eps: f64,
    /// Decoupled weight decay (per step, times the learning rate).
    pub weight_decay: f64,
}

impl Default for Hyper {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// The optimizer over a fixed, named set of parameters.
pub struct Optimizer {
    method: Method,
    hyper: Hyper,
    params: Vec<(String, Var)>,
    /// First and second moments by parameter name (AdamW only), created at the first step.
    m: HashMap<String, Tensor>,
    v: HashMap<String, Tensor>,
    /// Optimizer steps taken.
    step: u64,
}

/// Prefixes of the moment tensors in a saved state.
const M_PREFIX: &str = "adam.m.";
const V_PREFIX: &str = "adam.v.";

impl Optimizer {
    /// An optimizer with no steps taken.
    pub fn new(method: Method, hyper: Hyper, params: Vec<(String, Var)>) -> Self {
        Self {
            method,
            hyper,
            params,
            m: HashMap::new(),
            v: HashMap::new(),
            step: 0,
        }
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The parameters it updates.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// One update at learning rate `lr` with the gradients by parameter name. A parameter
    /// without a gradient is left as it is (and its moments are not advanced).
    pub fn step(&mut self, grads: &HashMap<String, Tensor>, lr: f64) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let Hyper {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.hyper;
        for (name, var) in &self.params {
            let Some(g) = grads.get(name) else { continue };
            let p = var.as_tensor().detach();
            let next = match self.method {
                Method::Sgd => (&p - (g * lr)?)?,
                Method::AdamW => {
                    let m = match self.m.get(name) {
                        Some(m) => ((m * beta1)? + (g * (1.0 - beta1))?)?,
                        None => (g * (1.0 - beta1))?,
                    };
                    let g2 = g.sqr()?;
                    let v = match self.v.get(name) {
                        Some(v) => ((v * beta2)? + (g2 * (1.0 - beta2))?)?,
                        None => (g2 * (1.0 - beta2))?,
                    };
                    let m_hat = (&m / (1.0 - beta1.powi(t)))?;
                    let v_hat = (&v / (1.0 - beta2.powi(t)))?;
                    let update = (m_hat / (v_hat.sqrt()? + eps)?)?;
                    let decayed = if weight_decay > 0.0 {
                        (&p * (1.0 - lr * weight_decay))?
                    } else {
                        p
                    };
                    self.m.insert(name.clone(), m);
                    self.v.insert(name.clone(), v);
                    (decayed - (update * lr)?)?
                }
            };
            var.set(&next)?;
        }
        Ok(())
    }

    /// The state to checkpoint: the moments by prefixed name (the step count goes into the
    /// checkpoint's JSON, see [`Optimizer::restore`]).
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (k, t) in &self.m {
            out.insert(format!("{M_PREFIX}{k}"), t.clone());
        }
        for (k, t) in &self.v {
            out.insert(format!("{V_PREFIX}{k}"), t.clone());
        }
        out
    }

    /// Restores the moments saved by [`Optimizer::state`] and the step count. Moments of names
    /// this optimizer does not train are an error: the checkpoint is of another run.
    pub fn restore(
        &mut self,
        state: HashMap<String, Tensor>,
        step: u64,
    ) -> std::result::Result<(), String> {
        let known: std::collections::HashSet<&str> =
            self.params.iter().map(|(n, _)| n.as_str()).collect();
        self.m.clear();
        self.v.clear();
        for (k, t) in state {
            let (map, name) = if let Some(n) = k.strip_prefix(M_PREFIX) {
                (&mut self.m, n.to_string())
            } else if let Some(n) = k.strip_prefix(V_PREFIX) {
                (&mut self.v, n.to_string())
            } else {
                return Err(format!("unexpected tensor {k:?} in the optimizer state"));
            };
            if !known.contains(name.as_str()) {
                return Err(format!(
                    "the optimizer state holds {name:?}, which this run does not train"
                ));
            }
            map.insert(name, t);
        }
        self.step = step;
        Ok(())
    }
}

/// How the learning rate changes after the warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decay {
    /// Half a cosine from the peak down to `min_ratio` of it at the last step.
    Cosine,
    /// A straight line from the peak down to `min_ratio` of it.
    Linear,
    /// The peak until the end.
    Constant,
}

impl Decay {
    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Decay::Cosine => "cosine",
            Decay::Linear => "linear",
            Decay::Constant => "constant",
        }
    }

    /// Parses a command-line name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "cosine" => Some(Decay::Cosine),
            "linear" => Some(Decay::Linear),
            "constant" => Some(Decay::Constant),
            _ => None,
        }
    }
}

/// Linear warmup to `peak`, then [`Decay`] down to `min_ratio · peak` at `total` steps.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// The learning rate after warmup.
    pub peak: f64,
    /// Warmup steps (the rate climbs linearly from peak/warmup to peak).
    pub warmup: u64,
    /// Optimizer steps in the whole run.
    pub total: u64,
    /// The decay after warmup.
    pub decay: Decay,
    /// Where the decay ends, as a share of the peak.
    pub min_ratio: f64,
}

impl Schedule {
    /// The learning rate of optimizer step `step` (1-based). Warmup climbs to the peak at step
    /// `warmup`; the decay then starts from the peak at step `warmup + 1` and reaches the floor
    /// only after the last step, so no step is taken at a zero rate.
    pub fn lr(&self, step: u64) -> f64 {
        let step = step.max(1);
        if step <= self.warmup {
            return self.peak * step as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((step - self.warmup - 1) as f64 / span).clamp(0.0, 1.0);
        let floor = self.peak * self.min_ratio;
        match self.decay {
            Decay::Constant => self.peak,
            Decay::Linear => floor + (self.peak - floor) * (1.0 - progress),
            Decay::Cosine => {
                floor + (self.peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

/// The order in which an epoch visits `n` samples: a Fisher–Yates shuffle driven by SplitMix64
/// seeded with `seed` and the epoch, so that the order of any epoch is known without replaying
/// the ones before it (which is what `--resume` needs).
pub fn epoch_order(n: usize, seed: u64, epoch: u32) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64(seed ^ (u64::from(epoch).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn warmup_then_cosine_decays_toward_the_floor_without_a_zero_step() {
        let s = Schedule {
            peak: 1e-3,
            warmup: 10,
            total: 110,
            decay: Decay::Cosine,
            min_ratio: 0.1,
        };
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(s.lr(1), 1e-4));
        assert!(close(s.lr(10), 1e-3));
        assert!(close(s.lr(11), 1e-3), "the decay starts at the peak");
        assert!(close(s.lr(61), 0.55e-3), "half way: {}", s.lr(61));
        let last = s.lr(110);
        assert!(last > 1e-4 && last < 1.01e-4, "{last}");
        let l = Schedule {
            decay: Decay::Linear,
            ..s
        };
        assert!(close(l.lr(61), 0.55e-3));
        assert!(l.lr(110) > 1e-4);
        let c = Schedule {
            decay: Decay::Constant,
            ..s
        };
        assert_eq!(c.lr(100), 1e-3);
        let no_warmup = Schedule { warmup: 0, ..s };
        assert!(close(no_warmup.lr(1), 1e-3), "no warmup starts at the peak");
        let zero = Schedule {
            min_ratio: 0.0,
            ..s
        };
        assert!(zero.lr(110) > 0.0, "the last step still learns");
    }

    #[test]
    fn epoch_orders_are_permutations_that_differ_by_epoch_and_repeat_by_seed() {
        let a = epoch_order(50, 7, 0);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(50, 7, 0));
        assert_ne!(a, epoch_order(50, 7, 1));
        assert_ne!(a, epoch_order(50, 8, 0));
    }

    #[test]
    fn adamw_first_step_moves_each_weight_by_lr_against_its_gradient() {
        let p = Var::from_vec(vec![1.0f32, -2.0, 3.0], 3, &Device::Cpu).unwrap();
        let mut opt = Optimizer::new(
            Method::AdamW,
            Hyper::default(),
            vec![("w".into(), p.clone())],
        );
        let g = Tensor::new(&[0.5f32, -4.0, 0.0], &Device::Cpu).unwrap();
        let grads = HashMap::from([("w".to_string(), g)]);
        opt.step(&grads, 0.1).unwrap();
        let after: Vec<f32> = p.as_tensor().to_vec1().unwrap();
        // Bias-corrected first step: update = g/|g| (sign), zero gradient → no move.
        assert!((after[0] - 0.9).abs() < 1e-5, "{after:?}");
        assert!((after[1] + 1.9).abs() < 1e-5, "{after:?}");
        assert!((after[2] - 3.0).abs() < 1e-5, "{after:?}");
    }

    #[test]
    fn a_restored_optimizer_continues_exactly_like_the_original() {
        let dev = Device::Cpu;
        let grads_at = |i: usize| {
            HashMap::from([(
                "w".to_string(),
                Tensor::new(&[0.3f32 * i as f32, -0.7, 1.1], &dev).unwrap(),
            )])
        };
        let p1 = Var::from_vec(vec![1.0f32, 2.0, 3.0], 3, &dev).unwrap();
        let mut a = Optimizer::new(
            Method::AdamW,
            Hyper::default(),
            vec![("w".into(), p1.clone())],
        );
        for i in 1..=3 {
            a.step(&grads_at(i), 0.01).unwrap();
        }
        let saved = a.state();
        let p2 = Var::from_tensor(&p1.as_tensor().copy().unwrap()).unwrap();
        let mut b = Optimizer::new(
            Method::AdamW,
            Hyper::default(),
            vec![("w".into(), p2.clone())],
        );
        b.restore(saved, a.steps()).unwrap();
        for i in 4..=6 {
            a.step(&grads_at(i), 0.01).unwrap();
            b.step(&grads_at(i), 0.01).unwrap();
        }
        let (x, y): (Vec<f32>, Vec<f32>) = (
            p1.as_tensor().to_vec1().unwrap(),
            p2.as_tensor().to_vec1().unwrap(),
        );
        assert_eq!(x, y);
        let mut c = Optimizer::new(Method::AdamW, Hyper::default(), vec![("other".into(), p2)]);
        assert!(c.restore(a.state(), 6).is_err());
    }
}
