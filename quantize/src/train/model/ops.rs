//! Fused CPU operations of the trainer's forward pass, each with its backward pass.
//!
//! candle-nn 0.11.1's fused `rms_norm`, `softmax_last_dim` and `rope` have no backward pass
//! (only the composite forms do, at several passes over memory each). These do one pass forward
//! and express the backward pass with ordinary tensor operations (or the same kernel):
//! - [`FrozenLinear`]: `x·Wᵀ` for a weight that never trains. candle's `matmul` backward always
//!   computes the right-hand side's gradient, which for a frozen base weight is a wasted matmul as
//!   large as the forward one, kept in the gradient store until the step ends (for a 1.5B model,
//!   6 GB). This op returns the input's gradient only.
//! - [`RmsNorm`]: `x / sqrt(mean(x²) + eps)` over the last dimension (the weight is multiplied
//!   outside, so that it can train).
//! - [`CausalSoftmax`]: `softmax(scale · s)` over the last dimension of `[heads, T, T]` scores,
//!   with the causal (and optional sliding-window) mask applied in the same pass.
//! - [`Rope`]: rotary position embedding in llama.cpp's two layouts; its backward pass is the
//!   inverse rotation.
//! - [`TokenNll`]: the negative log-likelihood of chosen targets per row of `[T, vocab]` logits,
//!   without materializing a log-softmax.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor, D};

/// The contiguous `f32` data of a CPU storage.
fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("{op}: the input must be contiguous"),
    }
}

/// `x·Wᵀ` (`x`: `[m, k]`, `W`: `[n, k]`) with a gradient for `x` only.
pub(super) struct FrozenLinear {
    pub w: Tensor,
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, k) = l.shape().dims2()?;
        let (ws, wl) = self.w.storage_and_layout();
        let Storage::Cpu(ws) = &*ws else {
            bail!("frozen-linear: the weight is not on the CPU")
        };
        let (n, wk) = wl.shape().dims2()?;
        if wk != k {
            bail!("frozen-linear: input [{m}, {k}] does not fit weight [{n}, {wk}]")
        }
        let wt = wl.transpose(0, 1)?;
        let out = ws_matmul(s, ws, (1, m, n, k), l, &wt)?;
        Ok((out, Shape::from((m, n))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.matmul(&self.w)?))
    }
}

fn ws_matmul(
    lhs: &CpuStorage,
    rhs: &CpuStorage,
    bmnk: (usize, usize, usize, usize),
    ll: &Layout,
    rl: &Layout,
) -> Result<CpuStorage> {
    BackendStorage::matmul(lhs, rhs, bmnk, ll, rl)
}

/// RMS normalization over the last dimension, without a weight.
pub(super) struct RmsNorm {
    pub eps: f32,
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "rms-norm")?;
        let n = *l.dims().last().unwrap_or(&1);
        let mut out = vec![0f32; x.len()];
        for (row, o) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
            // Summed in f64, as ggml does.
            let ss: f64 = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
            let r = 1.0 / ((ss / n as f64) as f32 + self.eps).sqrt();
            for (o, &v) in o.iter_mut().zip(row) {
                *o = v * r;
            }
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        // y = x·r, r = (mean(x²) + eps)^-½  ⇒  dx = r·(g − y·mean(g·y)).
        let r = (x.sqr()?.mean_keepdim(D::Minus1)? + f64::from(self.eps))?
            .sqrt()?
            .recip()?;
        let gy = (g * y)?.mean_keepdim(D::Minus1)?;
        let dx = g.broadcast_sub(&y.broadcast_mul(&gy)?)?.broadcast_mul(&r)?;
        Ok(Some(dx))
    }
}

/// `softmax(scale · s)` over the last dimension of `[heads, T, T]` attention scores; query `i`
/// sees keys `j ≤ i` with `i − j < window`.
pub(super) struct CausalSoftmax {
    pub scale: f32,
    pub window: Option<usize>,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "causal-softmax")?;
        let (_, t, t2) = l.shape().dims3()?;
        if t != t2 {
            bail!(
                "causal-softmax: scores must be [heads, T, T], got {:?}",
                l.dims()
            )
        }
        let mut out = vec![0f32; x.len()];
        for (r, (row, o)) in x.chunks_exact(t).zip(out.chunks_exact_mut(t)).enumerate() {
            let i = r % t;
            let lo = match self.window {
                Some(w) => (i + 1).saturating_sub(w),
                None => 0,
            };
            let seen = &row[lo..=i];
            let max = seen.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let mut sum = 0f64;
            for (o, &v) in o[lo..=i].iter_mut().zip(seen) {
                let e = ((v - max) * self.scale).exp();
                *o = e;
                sum += f64::from(e);
            }
            let inv = (1.0 / sum) as f32;
            o[lo..=i].iter_mut().for_each(|o| *o *= inv);
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        // dx = scale · y·(g − Σ g·y); masked entries have y = 0 and get no gradient.
        let gy = (g * y)?.sum_keepdim(D::Minus1)?;
        let dx = (g.broadcast_sub(&gy)? * y)?;
        Ok(Some((dx * f64::from(self.scale))?))
    }
}

/// Rotary position embedding of `[heads, T, head_dim]` at positions `0..T`.
///
/// `cos`/`sin` are `[T, n_rot/2]`. `neox`: pairs `(i, i + n_rot/2)` (llama.cpp's
/// `LLAMA_ROPE_TYPE_NEOX`); otherwise adjacent pairs `(2i, 2i+1)` (`LLAMA_ROPE_TYPE_NORM`).
/// Dimensions from `n_rot` on pass through.
#[derive(Clone)]
pub(super) struct Rope {
    pub cos: Arc<Vec<f32>>,
    pub sin: Arc<Vec<f32>>,
    pub n_rot: usize,
    pub neox: bool,
    /// Rotate by the negative angle (the backward pass).
    pub inverse: bool,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "rope")?;
        let (_, t, d) = l.shape().dims3()?;
        let half = self.n_rot / 2;
        if self.n_rot > d || self.cos.len() != t * half {
            bail!(
                "rope: tables for T={t}, n_rot={} do not fit {:?}",
                self.n_rot,
                l.dims()
            )
        }
        let mut out = x.to_vec();
        let sign = if self.inverse { -1.0 } else { 1.0 };
        for (r, (row, o)) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)).enumerate() {
            let p = r % t;
            let cos = &self.cos[p * half..(p + 1) * half];
            let sin = &self.sin[p * half..(p + 1) * half];
            for i in 0..half {
                let (a, b) = if self.neox {
                    (i, i + half)
                } else {
                    (2 * i, 2 * i + 1)
                };
                let (c, s) = (cos[i], sign * sin[i]);
                let (x0, x1) = (row[a], row[b]);
                o[a] = x0 * c - x1 * s;
                o[b] = x0 * s + x1 * c;
            }
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let inv = Rope {
            inverse: !self.inverse,
            ..self.clone()
        };
        Ok(Some(g.contiguous()?.apply_op1_no_bwd(&inv)?))
    }
}

/// Per row `t` of `[T, vocab]` logits: `−log softmax(logits[t])[target[t]]`, or 0 where the
/// target is `None`. Output `[T]`.
pub(super) struct TokenNll {
    pub targets: Arc<Vec<Option<u32>>>,
}

impl CustomOp1 for TokenNll {
    fn name(&self) -> &'static str {
        "token-nll"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "token-nll")?;
        let (t, v) = l.shape().dims2()?;
        if self.targets.len() != t {
            bail!("token-nll: {} targets for {t} rows", self.targets.len())
        }
        let mut out = vec![0f32; t];
        for ((row, o), target) in x.chunks_exact(v).zip(&mut out).zip(self.targets.iter()) {
            if let Some(k) = *target {
                let Some(&xk) = row.get(k as usize) else {
                    bail!("token-nll: target {k} is outside the vocabulary of {v}")
                };
                *o = (log_sum_exp(row) - f64::from(xk)) as f32;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from(t)))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        // d/dlogits = g[t]·(softmax(logits[t]) − onehot(target[t])).
        let (t, v) = x.dims2()?;
        let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let gs = g.to_vec1::<f32>()?;
        let mut dx = vec![0f32; t * v];
        for (r, target) in self.targets.iter().enumerate() {
            let Some(k) = *target else { continue };
            let row = &xs[r * v..(r + 1) * v];
            let lse = log_sum_exp(row);
            let d = &mut dx[r * v..(r + 1) * v];
            for (d, &xi) in d.iter_mut().zip(row) {
                *d = (f64::from(xi) - lse).exp() as f32 * gs[r];
            }
            d[k as usize] -= gs[r];
        }
        Ok(Some(Tensor::from_vec(dx, (t, v), x.device())?))
    }
}

fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f64 = row.iter().map(|&v| f64::from(v - max).exp()).sum();
    f64::from(max) + sum.ln()
}
