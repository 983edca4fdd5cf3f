//! The vendored candle-core's gradient accumulation (vendor/candle-core,
//! `GradStore::accumulate`): a node's first gradient is stored as it is and
//! later ones are added, so fan-in sums and single-consumer paths must both
//! come out exact.

use candle_core::{Device, Tensor, Var};

#[test]
fn fan_in_gradients_sum_and_single_paths_pass_through() {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::new(&[1f32, -2.0, 3.0], &dev).unwrap()).unwrap();
    let w = Var::from_tensor(&Tensor::new(&[0.5f32, 4.0, -1.0], &dev).unwrap()).unwrap();
    // x reaches the loss three ways (a residual-like fan-in); w once, through
    // a reshape and a broadcast.
    let a = (x.as_tensor() * 2.0).unwrap();
    let b = x.as_tensor().mul(w.as_tensor()).unwrap();
    let c = (a + b).unwrap().add(x.as_tensor()).unwrap();
    let loss = c.sqr().unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let gx = grads.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
    let gw = grads.get(w.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
    let (xs, ws) = ([1f32, -2.0, 3.0], [0.5f32, 4.0, -1.0]);
    for i in 0..3 {
        // c = x (3 + w); dL/dx = 2c (3 + w), dL/dw = 2c x.
        let c = xs[i] * (3.0 + ws[i]);
        assert_eq!(gx[i], 2.0 * c * (3.0 + ws[i]), "dL/dx[{i}]");
        assert_eq!(gw[i], 2.0 * c * xs[i], "dL/dw[{i}]");
    }
}
