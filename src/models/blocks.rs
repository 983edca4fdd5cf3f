//! Building blocks shared by the mobile families: squeeze-and-excitation
//! (Hu et al. 2018) and the inverted-residual block around it, as
//! MobileNetV3 and EfficientNet (B and V2) use them.

use candle_core::{Tensor, Var};

use super::layers::{Act, Conv, ConvBnAct, ConvSpec, DropPath, Freeze, Mode, ParamLoader};
use crate::error::Result;
use crate::formats::onnx::{Graph, Value};
use crate::kernels::Padding;

/// torchvision's `SqueezeExcitation`: `x · gate(fc2(act(fc1(avgpool(x)))))`,
/// `fc1`/`fc2` 1×1 convolutions with biases under `{prefix}.fc1`/`fc2`.
pub(crate) struct SqueezeExcite {
    fc1: Conv,
    fc2: Conv,
}

impl SqueezeExcite {
    pub fn load(
        p: &mut ParamLoader,
        prefix: &str,
        (channels, squeeze): (usize, usize),
        (act, gate): (Act, Act),
    ) -> Result<Self> {
        let one = |cin, cout| ConvSpec { cin, cout, kernel: (1, 1), stride: 1, pad: Padding::default(), groups: 1 };
        Ok(SqueezeExcite {
            fc1: Conv::load(p, &format!("{prefix}.fc1"), one(channels, squeeze), act)?,
            fc2: Conv::load(p, &format!("{prefix}.fc2"), one(squeeze, channels), gate)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let pooled = x.mean_keepdim(3)?.mean_keepdim(2)?;
        Ok(crate::kernels::norm::scale_planes(x, &self.fc2.forward(&self.fc1.forward(&pooled)?)?)?)
    }

    fn export_onnx(&self, g: &mut Graph, x: &Value) -> Result<Value> {
        let pooled = g.global_avg_pool_keep(x);
        let hidden = self.fc1.export_onnx(g, &pooled)?;
        let gate = self.fc2.export_onnx(g, &hidden)?;
        Ok(g.mul(x, &gate))
    }

    fn set_frozen(&mut self, frozen: bool) {
        self.fc1.set_frozen(frozen);
        self.fc2.set_frozen(frozen);
    }

    fn trainable_vars(&self, out: &mut Vec<Var>) {
        self.fc1.trainable_vars(out);
        self.fc2.trainable_vars(out);
    }

    fn named_vars(&self, out: &mut Vec<(String, Var)>) {
        self.fc1.named_vars(out);
        self.fc2.named_vars(out);
    }
}

/// Conv units, an optional squeeze-and-excitation after the first ones, more
/// conv units, and the input added back when `residual`: an inverted
/// residual (expand, depthwise, SE, project), a fused one, or a single
/// convolution (a stem, a last 1×1).
pub(crate) struct InvertedResidual {
    pub head: Vec<ConvBnAct>,
    pub se: Option<SqueezeExcite>,
    pub tail: Vec<ConvBnAct>,
    pub residual: bool,
    /// Stochastic depth of the branch when `residual` (EfficientNet's).
    pub drop: DropPath,
}

impl InvertedResidual {
    /// One convolution alone.
    pub(crate) fn single(conv: ConvBnAct) -> Self {
        InvertedResidual { head: vec![conv], se: None, tail: Vec::new(), residual: false, drop: DropPath::NONE }
    }

    pub(crate) fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let mut y = x.clone();
        for c in &self.head {
            y = c.forward(&y, mode)?;
        }
        if let Some(se) = &self.se {
            y = se.forward(&y)?;
        }
        for c in &self.tail {
            y = c.forward(&y, mode)?;
        }
        Ok(if self.residual { (self.drop.apply(y, mode)? + x)? } else { y })
    }

    pub(crate) fn export_onnx(&self, g: &mut Graph, x: Value) -> Result<Value> {
        let mut y = x.clone();
        for c in &self.head {
            y = c.export_onnx(g, &y)?;
        }
        if let Some(se) = &self.se {
            y = se.export_onnx(g, &y)?;
        }
        for c in &self.tail {
            y = c.export_onnx(g, &y)?;
        }
        Ok(if self.residual { g.add(&y, &x) } else { y })
    }

    pub(crate) fn set_freeze(&mut self, freeze: Freeze) -> Result<()> {
        for c in self.head.iter_mut().chain(self.tail.iter_mut()) {
            c.set_freeze(freeze)?;
        }
        if let Some(se) = &mut self.se {
            se.set_frozen(freeze.frozen);
        }
        Ok(())
    }

    pub(crate) fn trainable_vars(&self, out: &mut Vec<Var>) {
        for c in self.head.iter().chain(&self.tail) {
            c.trainable_vars(out);
        }
        if let Some(se) = &self.se {
            se.trainable_vars(out);
        }
    }

    /// In the state dict's order: head, SE, tail.
    pub(crate) fn named_vars(&self, out: &mut Vec<(String, Var)>) {
        for c in &self.head {
            c.named_vars(out);
        }
        if let Some(se) = &self.se {
            se.named_vars(out);
        }
        for c in &self.tail {
            c.named_vars(out);
        }
    }
}
