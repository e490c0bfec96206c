//! SGD with momentum, Nesterov and decoupled-from-BN weight decay, with PyTorch's update
//! rule (torch.optim.SGD, dampening 0):
//!
//! ```text
//! g   = grad + weight_decay * w          (only for decayed tensors)
//! buf = g                 on the first step, then  buf = momentum * buf + g
//! d   = g + momentum * buf  (Nesterov)   or        d = buf
//! w  -= lr * d
//! ```

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

pub struct Sgd {
    params: Vec<Param>,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
}

struct Param {
    name: String,
    var: Var,
    decay: bool,
    buffer: Option<Tensor>,
}

impl Sgd {
    /// `decay_bn_and_bias` false: tensors of rank 1 (BN gamma and beta, fc bias) get no
    /// weight decay.
    pub fn new<'a>(
        vars: impl IntoIterator<Item = (&'a String, &'a Var)>,
        momentum: f64,
        nesterov: bool,
        weight_decay: f64,
        decay_bn_and_bias: bool,
    ) -> Sgd {
        let params = vars
            .into_iter()
            .map(|(name, var)| Param {
                name: name.clone(),
                var: var.clone(),
                decay: decay_bn_and_bias || var.rank() > 1,
                buffer: None,
            })
            .collect();
        Sgd {
            params,
            momentum,
            nesterov,
            weight_decay,
        }
    }

    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        for p in &mut self.params {
            let Some(grad) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            // Detached: a gradient carries the op graph that produced it, and a momentum
            // buffer built from it would keep every step's activations alive.
            let mut g = grad.detach();
            if p.decay && self.weight_decay != 0.0 {
                g = (g + (p.var.as_tensor() * self.weight_decay)?)?;
            }
            let direction = if self.momentum != 0.0 {
                let buffer = match &p.buffer {
                    None => g.clone(),
                    Some(b) => ((b * self.momentum)? + &g)?,
                };
                let d = if self.nesterov {
                    (&g + (&buffer * self.momentum)?)?
                } else {
                    buffer.clone()
                };
                p.buffer = Some(buffer.detach());
                d
            } else {
                g
            };
            p.var
                .set(&(p.var.as_tensor().detach() - (direction * lr)?)?.detach())?;
        }
        Ok(())
    }

    /// Momentum buffers by parameter name (for checkpoints).
    pub fn buffers(&self) -> BTreeMap<String, Tensor> {
        self.params
            .iter()
            .filter_map(|p| p.buffer.as_ref().map(|b| (p.name.clone(), b.clone())))
            .collect()
    }

    /// Restores buffers saved by `buffers`; a name the optimizer does not know is an error.
    pub fn load_buffers(&mut self, mut buffers: BTreeMap<String, Tensor>) -> anyhow::Result<()> {
        for p in &mut self.params {
            p.buffer = buffers.remove(&p.name);
        }
        if let Some(name) = buffers.keys().next() {
            anyhow::bail!(
                "checkpoint has a momentum buffer for `{name}`, which the model does not have"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Three steps on f(w) = sum(w^2)/2 (gradient w), against the rule written out by hand.
    #[test]
    fn matches_the_pytorch_rule() {
        for nesterov in [false, true] {
            let w = Var::new(&[1.0f64, -2.0], &Device::Cpu).unwrap();
            let name = "layer.weight".to_string();
            let vars = [(&name, &w)];
            let (lr, m, wd) = (0.1, 0.9, 0.01);
            // Rank-1 tensors are only decayed when asked.
            let mut sgd = Sgd::new(vars, m, nesterov, wd, true);
            let mut expected = [1.0f64, -2.0];
            let mut buffer: Option<[f64; 2]> = None;
            for _ in 0..3 {
                let loss = (w.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap();
                sgd.step(&loss.backward().unwrap(), lr).unwrap();
                let g = expected.map(|x| x + wd * x);
                let b = match buffer {
                    None => g,
                    Some(b) => [m * b[0] + g[0], m * b[1] + g[1]],
                };
                buffer = Some(b);
                for i in 0..2 {
                    let d = if nesterov { g[i] + m * b[i] } else { b[i] };
                    expected[i] -= lr * d;
                }
            }
            let got: Vec<f64> = w.as_tensor().to_vec1().unwrap();
            for i in 0..2 {
                assert!(
                    (got[i] - expected[i]).abs() < 1e-12,
                    "{got:?} vs {expected:?}"
                );
            }
        }
    }

    #[test]
    fn bn_and_bias_are_not_decayed_by_default() {
        let gamma = Var::new(&[1.0f64], &Device::Cpu).unwrap();
        let name = "bn1.weight".to_string();
        let mut sgd = Sgd::new([(&name, &gamma)], 0.0, false, 0.5, false);
        // Zero gradient: only weight decay could move it.
        let loss = (gamma.as_tensor() * 0.0).unwrap().sum_all().unwrap();
        sgd.step(&loss.backward().unwrap(), 1.0).unwrap();
        assert_eq!(gamma.as_tensor().to_vec1::<f64>().unwrap(), vec![1.0]);
    }
}
