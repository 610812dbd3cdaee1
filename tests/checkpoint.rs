//! `autograd::checkpoint` on its own: the same gradients as the plain tape (in f64, for
//! inputs and for parameters the function reads), nesting, a checkpoint whose output is
//! used twice, `no_grad`, and the errors a wrong parameter list must give. The model-level
//! checks (DistilBERT, T5, with dropout) are in tests/budget.rs.

use fusebox::autograd::{backward, checkpoint, no_grad, tape_len, Grads};
use fusebox::rng::Rng;
use fusebox::{Device, Result, Tensor};

fn randn(rng: &mut Rng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.normal() * 0.5).collect();
    Tensor::var(&Tensor::from_f64(v, shape, Device::Cpu).unwrap())
}

/// `LN(gelu(x·W1ᵀ + b) + x)`: a residual block with every kind of saved tensor.
fn block(x: &Tensor, w: &Tensor, b: &Tensor, g: &Tensor, beta: &Tensor) -> Result<Tensor> {
    let h = x.linear(w, Some(b))?.gelu()?;
    h.add(x)?.layer_norm(g, beta, 1e-5)
}

struct P {
    w: Tensor,
    b: Tensor,
    g: Tensor,
    beta: Tensor,
}

impl P {
    fn new(rng: &mut Rng, d: usize) -> P {
        P {
            w: randn(rng, &[d, d]),
            b: randn(rng, &[d]),
            g: randn(rng, &[d]),
            beta: randn(rng, &[d]),
        }
    }
    fn all(&self) -> Vec<Tensor> {
        vec![
            self.w.clone(),
            self.b.clone(),
            self.g.clone(),
            self.beta.clone(),
        ]
    }
    fn run(&self, x: &Tensor) -> Result<Tensor> {
        block(x, &self.w, &self.b, &self.g, &self.beta)
    }
    fn run_ckpt(&self, x: &Tensor) -> Result<Tensor> {
        let (w, b, g, beta) = (
            self.w.clone(),
            self.b.clone(),
            self.g.clone(),
            self.beta.clone(),
        );
        checkpoint("block", &[x], &self.all(), move |t| {
            block(&t[0], &w, &b, &g, &beta)
        })
    }
}

fn assert_same(a: &Grads, b: &Grads, ts: &[&Tensor]) {
    for t in ts {
        let (x, y) = (
            a.get(t).expect("plain grad").to_vec_f64().unwrap(),
            b.get(t).expect("checkpointed grad").to_vec_f64().unwrap(),
        );
        for (u, v) in x.iter().zip(&y) {
            assert!((u - v).abs() <= 1e-12 * (1.0 + u.abs()), "{u} vs {v}");
        }
    }
}

#[test]
fn two_blocks_and_a_shared_output_match_the_plain_tape() {
    let mut rng = Rng::new(3);
    let (n, d) = (6, 8);
    let x = randn(&mut rng, &[n, d]);
    let (p1, p2) = (P::new(&mut rng, d), P::new(&mut rng, d));
    let head = randn(&mut rng, &[3, d]);
    let loss = |ckpt: bool| -> Tensor {
        let h1 = if ckpt { p1.run_ckpt(&x) } else { p1.run(&x) }.unwrap();
        let h2 = if ckpt { p2.run_ckpt(&h1) } else { p2.run(&h1) }.unwrap();
        // h1 is used twice: by the second block and here.
        h2.add(&h1)
            .unwrap()
            .linear(&head, None)
            .unwrap()
            .gelu()
            .unwrap()
            .sum_all()
            .unwrap()
    };
    let plain = backward(&loss(false)).unwrap();
    let ckpt = backward(&loss(true)).unwrap();
    assert_eq!(tape_len(), 0);
    let mut all = vec![&x, &head];
    let (a1, a2) = (p1.all(), p2.all());
    all.extend(a1.iter().chain(&a2));
    assert_same(&plain, &ckpt, &all);
    assert_eq!(plain.len(), ckpt.len());
}

#[test]
fn nested_checkpoints_match_the_plain_tape() {
    let mut rng = Rng::new(5);
    let d = 4;
    let x = randn(&mut rng, &[3, d]);
    let (p1, p2) = (P::new(&mut rng, d), P::new(&mut rng, d));
    let plain = backward(&p2.run(&p1.run(&x).unwrap()).unwrap().sum_all().unwrap()).unwrap();
    let mut params = p1.all();
    params.extend(p2.all());
    let (q1, q2) = (
        P {
            w: p1.w.clone(),
            b: p1.b.clone(),
            g: p1.g.clone(),
            beta: p1.beta.clone(),
        },
        P {
            w: p2.w.clone(),
            b: p2.b.clone(),
            g: p2.g.clone(),
            beta: p2.beta.clone(),
        },
    );
    let outer = checkpoint("outer", &[&x], &params, move |t| {
        let h = q1.run_ckpt(&t[0])?;
        q2.run_ckpt(&h)
    })
    .unwrap();
    let ckpt = backward(&outer.sum_all().unwrap()).unwrap();
    let mut all = vec![&x];
    all.extend(params.iter());
    assert_same(&plain, &ckpt, &all);
}

#[test]
fn under_no_grad_it_is_the_plain_function() {
    let mut rng = Rng::new(7);
    let x = randn(&mut rng, &[2, 4]);
    let p = P::new(&mut rng, 4);
    let _g = no_grad();
    let y = p.run_ckpt(&x).unwrap();
    assert!(!y.tracks());
    assert_eq!(tape_len(), 0);
    assert_eq!(
        y.to_vec_f64().unwrap(),
        p.run(&x).unwrap().to_vec_f64().unwrap()
    );
}

#[test]
fn an_undeclared_parameter_is_an_error_not_a_lost_gradient() {
    let mut rng = Rng::new(9);
    let x = randn(&mut rng, &[2, 4]);
    let p = P::new(&mut rng, 4);
    let w = p.w.clone();
    // Only the weight is declared; the bias, gamma and beta are read but not listed.
    let (b, g, beta) = (p.b.clone(), p.g.clone(), p.beta.clone());
    let declared = [w.clone()];
    let y = checkpoint("block", &[&x], &declared, move |t| {
        block(&t[0], &w, &b, &g, &beta)
    })
    .unwrap();
    let err = backward(&y.sum_all().unwrap())
        .err()
        .expect("undeclared parameters must fail")
        .to_string();
    assert!(err.contains("neither as inputs nor as parameters"), "{err}");
    assert_eq!(tape_len(), 0, "the tape is left empty after the failure");
}
