//! The first libtorch test: a forward and backward pass of a tiny tensor program on the CPU.

use tch::{Device, Kind, Tensor};

#[test]
fn forward_and_backward_of_a_tiny_program() {
    tch::manual_seed(0);
    let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).to_device(Device::Cpu);
    let w = Tensor::from_slice(&[0.5f32, -1.0, 2.0]).set_requires_grad(true);
    // y = sum(w * x^2) = 0.5*1 - 1*4 + 2*9 = 14.5 ; dy/dw = x^2
    let y = (&w * x.pow_tensor_scalar(2)).sum(Kind::Float);
    assert!((y.double_value(&[]) - 14.5).abs() < 1e-6);
    y.backward();
    let g: Vec<f32> = Vec::try_from(w.grad()).unwrap();
    assert_eq!(g, vec![1.0, 4.0, 9.0]);
}
