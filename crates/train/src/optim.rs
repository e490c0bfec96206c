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
use cardinal_kernels::sgd::{sgd_step, SgdRule};

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

impl Param {
    /// One step of `rule` for this parameter, as candle ops, each a pass that allocates.
    fn step_with_candle_ops(&mut self, grad: &Tensor, rule: &SgdRule) -> Result<()> {
        // Detached: a gradient carries the op graph that produced it, and a momentum
        // buffer built from it would keep every step's activations alive.
        let mut g = grad.detach();
        if let Some(weight_decay) = rule.weight_decay {
            g = (g + (self.var.as_tensor() * weight_decay)?)?;
        }
        let direction = if rule.momentum != 0.0 {
            let buffer = match &self.buffer {
                None => g.clone(),
                Some(b) => ((b * rule.momentum)? + &g)?,
            };
            let d = if rule.nesterov {
                (&g + (&buffer * rule.momentum)?)?
            } else {
                buffer.clone()
            };
            self.buffer = Some(buffer.detach());
            d
        } else {
            g
        };
        self.var
            .set(&(self.var.as_tensor().detach() - (direction * rule.lr)?)?.detach())
    }
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

    /// One step of every parameter that has a gradient. On the CPU, in f32 and f64, each
    /// parameter and its momentum buffer are updated in place by cardinal-kernels' `sgd`
    /// passes; elsewhere by candle's ops ([`Sgd::step_with_candle_ops`]). Both give the same
    /// bits.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.each_param(grads, lr, |p, grad, rule| {
            match sgd_step(p.var.as_tensor(), grad, p.buffer.as_ref(), rule)? {
                Some(buffer) => p.buffer = buffer,
                None => p.step_with_candle_ops(grad, rule)?,
            }
            Ok(())
        })
    }

    /// [`Sgd::step`] with candle's ops for every parameter: the reference of the in-place
    /// passes, and the path of other devices and dtypes.
    pub fn step_with_candle_ops(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.each_param(grads, lr, |p, grad, rule| {
            p.step_with_candle_ops(grad, rule)
        })
    }

    /// Calls `step` with every parameter that has a gradient, its gradient and its rule.
    fn each_param(
        &mut self,
        grads: &GradStore,
        lr: f64,
        mut step: impl FnMut(&mut Param, &Tensor, &SgdRule) -> Result<()>,
    ) -> Result<()> {
        for p in &mut self.params {
            let Some(grad) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            let rule = SgdRule {
                lr,
                momentum: self.momentum,
                nesterov: self.nesterov,
                weight_decay: (p.decay && self.weight_decay != 0.0).then_some(self.weight_decay),
            };
            step(p, grad, &rule)?;
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

    /// The in-place passes against candle's ops, bit for bit, over four steps: f32 and f64,
    /// with and without momentum, Nesterov and weight decay, on values that include zeros
    /// of both signs (candle's `x * s` turns -0 into +0, which the passes must keep) and a
    /// tensor that gets no gradient.
    #[test]
    fn in_place_steps_match_candle_ops_bit_for_bit() {
        use candle_core::DType;
        let values: Vec<f64> = (0..50_011)
            .map(|i| match i % 7 {
                0 => -0.0,
                1 => 0.0,
                _ => ((i as f64 * 0.618_034).fract() - 0.5) * 3.0,
            })
            .collect();
        let cases = [
            (0.9, false, 5e-4),
            (0.9, true, 1e-4),
            (0.0, false, 5e-4),
            (0.9, false, 0.0),
        ];
        for dtype in [DType::F32, DType::F64] {
            for (momentum, nesterov, weight_decay) in cases {
                let make = || -> Vec<(String, Var)> {
                    let t = |n: usize, shift: usize| {
                        let v: Vec<f64> =
                            values.iter().cycle().skip(shift).take(n).copied().collect();
                        Tensor::new(v.as_slice(), &Device::Cpu)
                            .unwrap()
                            .to_dtype(dtype)
                            .unwrap()
                    };
                    vec![
                        (
                            "conv.weight".into(),
                            Var::from_tensor(&t(values.len(), 0).reshape((13, 3_847)).unwrap())
                                .unwrap(),
                        ),
                        ("bn.bias".into(), Var::from_tensor(&t(33, 5)).unwrap()),
                        ("frozen".into(), Var::from_tensor(&t(9, 3)).unwrap()),
                    ]
                };
                let (ours, theirs) = (make(), make());
                let mut fused = Sgd::new(
                    ours.iter().map(|(n, v)| (n, v)),
                    momentum,
                    nesterov,
                    weight_decay,
                    false,
                );
                let mut reference = Sgd::new(
                    theirs.iter().map(|(n, v)| (n, v)),
                    momentum,
                    nesterov,
                    weight_decay,
                    false,
                );
                for step in 0..4 {
                    let lr = 0.1 / (step + 1) as f64;
                    // The loss sum(w * c) has the gradient c: the same gradients for both.
                    let grads = |vars: &Vec<(String, Var)>| {
                        let mut loss = Tensor::zeros((), dtype, &Device::Cpu).unwrap();
                        for (k, (_, v)) in vars.iter().take(2).enumerate() {
                            let n = v.as_tensor().elem_count();
                            let c: Vec<f64> = values
                                .iter()
                                .cycle()
                                .skip(11 * step + k)
                                .take(n)
                                .copied()
                                .collect();
                            let c = Tensor::new(c.as_slice(), &Device::Cpu)
                                .unwrap()
                                .to_dtype(dtype)
                                .unwrap()
                                .reshape(v.as_tensor().shape())
                                .unwrap();
                            loss =
                                (loss + (v.as_tensor() * c).unwrap().sum_all().unwrap()).unwrap();
                        }
                        loss.backward().unwrap()
                    };
                    fused.step(&grads(&ours), lr).unwrap();
                    reference.step_with_candle_ops(&grads(&theirs), lr).unwrap();
                    let bits = |t: &Tensor| -> Vec<u64> {
                        let t = t.to_dtype(DType::F64).unwrap();
                        t.flatten_all()
                            .unwrap()
                            .to_vec1::<f64>()
                            .unwrap()
                            .iter()
                            .map(|v| v.to_bits())
                            .collect()
                    };
                    for ((name, a), (_, b)) in ours.iter().zip(&theirs) {
                        assert!(
                            bits(a.as_tensor()) == bits(b.as_tensor()),
                            "{dtype:?} momentum {momentum} nesterov {nesterov} decay {weight_decay}, step {step}: {name} differs"
                        );
                    }
                    let (fb, rb) = (fused.buffers(), reference.buffers());
                    assert_eq!(fb.keys().collect::<Vec<_>>(), rb.keys().collect::<Vec<_>>());
                    for (name, a) in &fb {
                        assert!(
                            bits(a) == bits(&rb[name]),
                            "{dtype:?} step {step}: buffer of {name} differs"
                        );
                    }
                }
            }
        }
    }
}
