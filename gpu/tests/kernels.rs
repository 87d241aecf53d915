//! Every kernel against sprout-core's reference kernel on small random shapes.

mod common;

use common::{close, close_to_max, normal, Harness};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use sprout_core::arch::{BnGeom, ConvGeom, DwGeom};
use sprout_core::engine::Mode;
use sprout_core::kernels::batchnorm as bn;
use sprout_core::kernels::conv::{conv2d_backward, conv2d_forward};
use sprout_core::kernels::depthwise::{depthwise_backward, depthwise_forward};
use sprout_core::kernels::linear::{linear_backward, linear_forward};
use sprout_core::kernels::loss::softmax_cross_entropy;
use sprout_core::kernels::pool::{gap_backward, gap_forward, maxpool_backward, maxpool_forward};
use sprout_core::kernels::Scratch;
use sprout_core::optim::{Adam, Sgd};
use sprout_core::rng::Rng;
use sprout_gpu::kernel::aligned;
use sprout_gpu::kernels::batchnorm::stride;
use sprout_gpu::kernels::estimator::Slots;
use sprout_gpu::kernels::linear::LinearGeom;
use sprout_gpu::kernels::optimizer::{sgd_words, MorphHyper};
use sprout_gpu::layout::Layout;

const RTOL: f32 = 1e-4;

fn runner() -> TestRunner {
    TestRunner::new(Config::with_cases(8))
}

fn check(r: Result<(), String>) -> Result<(), TestCaseError> {
    r.map_err(TestCaseError::fail)
}

/// Forward, input and weight gradient of one random conv against the CPU.
#[allow(clippy::too_many_arguments)]
fn conv_case(
    t: &Harness,
    (n, cin, cout, kernel, stride, pad, h, w, seed): (
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        u64,
    ),
) -> Result<(), TestCaseError> {
    let out = |x: usize| (x + 2 * pad - kernel) / stride + 1;
    let g = ConvGeom {
        cin,
        cout,
        kernel,
        stride,
        pad,
        in_hw: (h, w),
        out_hw: (out(h), out(w)),
    };
    let mut rng = Rng::new(seed);
    let x = normal(&mut rng, n * cin * h * w);
    let wt = normal(&mut rng, cout * g.patch());
    let dy = normal(&mut rng, n * cout * g.out_plane());
    let mut scratch = Scratch::new();
    let mut y = vec![0.0; dy.len()];
    conv2d_forward(&g, n, &x, &wt, &mut y, &mut scratch);
    let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; wt.len()]);
    conv2d_backward(&g, n, &x, &wt, &dy, Some(&mut dx), &mut dw, &mut scratch);

    let (xv, wv, dyv) = (t.upload(&x), t.upload(&wt), t.upload(&dy));
    let (yv, dxv, dwv) = (
        t.poisoned(y.len()),
        t.poisoned(dx.len()),
        t.poisoned(dw.len()),
    );
    let k = &t.k.conv;
    t.run(&[
        k.forward(&t.gpu, &g, n, &xv, &wv, &yv).unwrap(),
        k.backward_input(&t.gpu, &g, n, &dyv, &wv, &dxv).unwrap(),
        k.backward_weight(&t.gpu, &g, n, &xv, &dyv, &dwv).unwrap(),
    ]);
    check(close("y", &t.read(&yv, y.len()), &y, RTOL))?;
    check(close("dx", &t.read(&dxv, dx.len()), &dx, RTOL))?;
    check(close("dw", &t.read(&dwv, dw.len()), &dw, RTOL))
}

#[test]
fn conv_matches_cpu() {
    let Some(t) = Harness::new() else {
        return;
    };
    let shapes = (
        1usize..4,
        1usize..5,
        1usize..7,
        prop_oneof![Just(1usize), Just(3)],
        1usize..3,
        0usize..2,
        3usize..9,
        3usize..9,
        any::<u64>(),
    );
    runner().run(&shapes, |s| conv_case(&t, s)).unwrap();
}

/// Stride-1 shapes past one tile: channel counts that are not multiples of
/// the 8 x 4 channel blocks, widths that are not multiples of 4 pixels,
/// odd heights, pads 0 to 2 and batches whose rows split into several
/// weight-gradient chunks that cross samples.
#[test]
fn conv_tiles_match_cpu() {
    let Some(t) = Harness::new() else {
        return;
    };
    let shapes = (
        1usize..6,
        1usize..14,
        1usize..21,
        prop_oneof![Just(1usize), Just(3)],
        Just(1usize),
        0usize..3,
        1usize..14,
        1usize..14,
        any::<u64>(),
    )
        .prop_filter("output has pixels", |&(_, _, _, k, _, pad, h, w, _)| {
            h + 2 * pad >= k && w + 2 * pad >= k
        });
    TestRunner::new(Config::with_cases(24))
        .run(&shapes, |s| conv_case(&t, s))
        .unwrap();
}

#[test]
fn conv_rejects_short_buffers() {
    let Some(t) = Harness::new() else {
        return;
    };
    let g = ConvGeom {
        cin: 2,
        cout: 3,
        kernel: 3,
        stride: 1,
        pad: 1,
        in_hw: (4, 4),
        out_hw: (4, 4),
    };
    let (x, w, y) = (
        t.poisoned(2 * 16 - 1),
        t.poisoned(3 * 18),
        t.poisoned(3 * 16),
    );
    let err = t.k.conv.forward(&t.gpu, &g, 1, &x, &w, &y);
    assert!(
        matches!(err, Err(sprout_core::Error::Mismatch(_))),
        "{err:?}"
    );
}

#[test]
fn depthwise_matches_cpu() {
    let Some(t) = Harness::new() else {
        return;
    };
    let shapes = (
        1usize..4,
        1usize..6,
        1usize..3,
        2usize..10,
        2usize..10,
        any::<u64>(),
    );
    runner()
        .run(&shapes, |(n, c, stride, h, w, seed)| {
            let out = |x: usize| (x + 2 - 3) / stride + 1;
            let g = DwGeom {
                channels: c,
                stride,
                in_hw: (h, w),
                out_hw: (out(h), out(w)),
            };
            let mut rng = Rng::new(seed);
            let x = normal(&mut rng, n * c * h * w);
            let kk = normal(&mut rng, c * 9);
            let op = g.out_hw.0 * g.out_hw.1;
            let dy = normal(&mut rng, n * c * op);
            let mut y = vec![0.0; dy.len()];
            depthwise_forward(&g, n, &x, &kk, &mut y);
            let (mut dx, mut dk) = (vec![0.0; x.len()], vec![0.0; kk.len()]);
            depthwise_backward(&g, n, &x, &kk, &dy, Some(&mut dx), &mut dk);

            let (xv, kv, dyv) = (t.upload(&x), t.upload(&kk), t.upload(&dy));
            let (yv, dxv, dkv) = (
                t.poisoned(y.len()),
                t.poisoned(dx.len()),
                t.poisoned(dk.len()),
            );
            let k = &t.k.depthwise;
            t.run(&[
                k.forward(&t.gpu, &g, n, &xv, &kv, &yv).unwrap(),
                k.backward_input(&t.gpu, &g, n, &dyv, &kv, &dxv).unwrap(),
                k.backward_weight(&t.gpu, &g, n, &xv, &dyv, &dkv).unwrap(),
            ]);
            check(close("y", &t.read(&yv, y.len()), &y, RTOL))?;
            check(close("dx", &t.read(&dxv, dx.len()), &dx, RTOL))?;
            check(close("dk", &t.read(&dkv, dk.len()), &dk, RTOL))
        })
        .unwrap();
}

/// A BN block as the backend lays it out: gamma, beta, running mean and
/// variance, each `stride(c)` long.
/// BN plane sizes: any, or multiples of 4 (the vec4 kernels) half the time.
fn bn_planes() -> impl Strategy<Value = usize> {
    prop_oneof![1usize..30, (1usize..9).prop_map(|q| 4 * q)]
}

fn bn_block(gamma: &[f32], beta: &[f32], rm: &[f32], rv: &[f32]) -> Vec<f32> {
    let st = stride(gamma.len());
    let mut v = vec![0.0; 4 * st];
    for (j, t) in [gamma, beta, rm, rv].iter().enumerate() {
        v[j * st..j * st + t.len()].copy_from_slice(t);
    }
    v
}

#[test]
fn batchnorm_train_matches_cpu() {
    let Some(t) = Harness::new() else {
        return;
    };
    // Planes that are multiples of 4 take the vec4 kernels.
    let shapes = (2usize..5, 1usize..6, bn_planes(), any::<u64>());
    runner()
        .run(&shapes, |(n, c, plane, seed)| {
            let g = BnGeom {
                n,
                channels: c,
                plane,
            };
            let len = n * c * plane;
            let mut rng = Rng::new(seed);
            let y: Vec<f32> = (0..len).map(|_| 1.5 * rng.normal() + 0.3).collect();
            let da = normal(&mut rng, len);
            let gamma: Vec<f32> = (0..c).map(|_| 1.0 + 0.3 * rng.normal()).collect();
            let beta: Vec<f32> = (0..c).map(|_| 0.3 * rng.normal()).collect();
            let rm: Vec<f32> = (0..c).map(|_| 0.1 * rng.normal()).collect();
            let rv: Vec<f32> = (0..c).map(|_| 1.0 + 0.1 * rng.uniform()).collect();
            // CPU reference.
            let (mut mean, mut var, mut sc, mut sh) =
                (vec![0.0; c], vec![0.0; c], vec![0.0; c], vec![0.0; c]);
            bn::batch_stats(&g, &y, &mut mean, &mut var);
            bn::fold(&gamma, &beta, &mean, &var, &mut sc, &mut sh);
            let mut a = vec![0.0; len];
            bn::scale_shift_relu(&g, &y, &sc, &sh, &mut a);
            let (mut dy, mut dg, mut db) = (vec![0.0; len], vec![0.0; c], vec![0.0; c]);
            bn::backward_train(
                &g, &y, &a, &da, &mean, &var, &gamma, &mut dy, &mut dg, &mut db,
            );
            let (mut rm2, mut rv2) = (rm.clone(), rv.clone());
            bn::update_running(&g, &mean, &var, &mut rm2, &mut rv2);

            let st = stride(c);
            let bnv = t.upload(&bn_block(&gamma, &beta, &rm, &rv));
            let (yv, dav) = (t.upload(&y), t.upload(&da));
            let stats = t.poisoned(2 * st);
            let (av, dyv, grads) = (t.poisoned(len), t.poisoned(len), t.poisoned(2 * st));
            let loss = t.upload(&[1.0]);
            let k = &t.k.bn;
            let gpu = &t.gpu;
            t.run(&[
                k.stats(gpu, &g, &yv, &stats).unwrap(),
                k.forward(gpu, &g, &yv, &bnv, &stats, Mode::Train, &av)
                    .unwrap(),
                k.backward_params(gpu, &g, &yv, &av, &dav, &stats, &bnv, Mode::Train, &grads)
                    .unwrap(),
                k.backward(
                    gpu,
                    &g,
                    &yv,
                    &av,
                    &dav,
                    &stats,
                    &bnv,
                    &grads,
                    Mode::Train,
                    &dyv,
                )
                .unwrap(),
                k.update_running(gpu, &g, &stats, &bnv, &loss).unwrap(),
            ]);
            let s = t.read(&stats, 2 * st);
            check(close("mean", &s[..c], &mean, RTOL))?;
            check(close("var", &s[st..st + c], &var, RTOL))?;
            check(close("a", &t.read(&av, len), &a, RTOL))?;
            let gr = t.read(&grads, 2 * st);
            // dgamma and dy cancel sums of terms of size |da| |x_hat| and
            // |gamma| |da| / sigma (exactly so with two samples per channel):
            // f32 rounding is relative to those terms, not to the result.
            let da_max = da.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let x_hat_max = (0..len)
                .map(|i| {
                    let ch = (i / plane) % c;
                    (y[i] - mean[ch]).abs() / (var[ch] + 1e-5).sqrt()
                })
                .fold(0.0f32, f32::max);
            let dg_terms = (n * plane) as f32 * da_max * x_hat_max;
            let dy_terms = (0..c)
                .map(|ch| gamma[ch].abs() / (var[ch] + 1e-5).sqrt())
                .fold(0.0f32, f32::max)
                * da_max
                * (1.0 + x_hat_max);
            check(close_to_max("dgamma", &gr[..c], &dg, 1e-3, 1e-5 * dg_terms))?;
            check(close("dbeta", &gr[st..st + c], &db, RTOL))?;
            check(close_to_max(
                "dy",
                &t.read(&dyv, len),
                &dy,
                1e-3,
                1e-5 * dy_terms,
            ))?;
            let b = t.read(&bnv, 4 * st);
            check(close("running mean", &b[2 * st..2 * st + c], &rm2, RTOL))?;
            check(close("running var", &b[3 * st..3 * st + c], &rv2, RTOL))
        })
        .unwrap();
}

#[test]
fn batchnorm_eval_matches_cpu() {
    let Some(t) = Harness::new() else {
        return;
    };
    let shapes = (1usize..4, 1usize..6, bn_planes(), any::<u64>());
    runner()
        .run(&shapes, |(n, c, plane, seed)| {
            let g = BnGeom {
                n,
                channels: c,
                plane,
            };
            let len = n * c * plane;
            let mut rng = Rng::new(seed);
            let y = normal(&mut rng, len);
            let da = normal(&mut rng, len);
            let gamma: Vec<f32> = (0..c).map(|_| 1.0 + 0.3 * rng.normal()).collect();
            let beta: Vec<f32> = (0..c).map(|_| 0.3 * rng.normal()).collect();
            let rm: Vec<f32> = (0..c).map(|_| 0.2 * rng.normal()).collect();
            let rv: Vec<f32> = (0..c).map(|_| 0.5 + rng.uniform()).collect();
            let (mut sc, mut sh) = (vec![0.0; c], vec![0.0; c]);
            bn::fold(&gamma, &beta, &rm, &rv, &mut sc, &mut sh);
            let mut a = vec![0.0; len];
            bn::scale_shift_relu(&g, &y, &sc, &sh, &mut a);
            let (mut dy, mut dg, mut db) = (vec![0.0; len], vec![0.0; c], vec![0.0; c]);
            bn::backward_eval(
                &g,
                &y,
                &a,
                &da,
                &rm,
                &rv,
                &gamma,
                &mut dy,
                Some((&mut dg, &mut db)),
            );

            let st = stride(c);
            let bnv = t.upload(&bn_block(&gamma, &beta, &rm, &rv));
            let (yv, dav) = (t.upload(&y), t.upload(&da));
            let stats = t.poisoned(2 * st);
            let (av, dyv, grads) = (t.poisoned(len), t.poisoned(len), t.poisoned(2 * st));
            let k = &t.k.bn;
            let gpu = &t.gpu;
            t.run(&[
                k.forward(gpu, &g, &yv, &bnv, &stats, Mode::Eval, &av)
                    .unwrap(),
                k.backward_params(gpu, &g, &yv, &av, &dav, &stats, &bnv, Mode::Eval, &grads)
                    .unwrap(),
                k.backward(
                    gpu,
                    &g,
                    &yv,
                    &av,
                    &dav,
                    &stats,
                    &bnv,
                    &grads,
                    Mode::Eval,
                    &dyv,
                )
                .unwrap(),
            ]);
            check(close("a", &t.read(&av, len), &a, RTOL))?;
            check(close("dy", &t.read(&dyv, len), &dy, RTOL))?;
            let gr = t.read(&grads, 2 * st);
            check(close("dgamma", &gr[..c], &dg, 1e-3))?;
            check(close("dbeta", &gr[st..st + c], &db, RTOL))
        })
        .unwrap();
}

#[test]
fn pools_match_cpu() {
    let Some(t) = Harness::new() else {
        return;
    };
    let shapes = (1usize..8, 1usize..9, 1usize..9, any::<u64>());
    runner()
        .run(&shapes, |(planes, h, w, seed)| {
            let mut rng = Rng::new(seed);
            let x = normal(&mut rng, planes * h * w);
            let (oh, ow) = (h / 2, w / 2);
            let da = normal(&mut rng, planes * oh * ow);
            let mut a = vec![0.0; da.len()];
            maxpool_forward(planes, (h, w), &x, &mut a);
            let mut dh = vec![0.0; x.len()];
            maxpool_backward(planes, (h, w), &x, &da, &mut dh);
            let mut f = vec![0.0; planes];
            gap_forward(planes, h * w, &x, &mut f);
            let df = normal(&mut rng, planes);
            let mut dg = vec![0.0; x.len()];
            gap_backward(planes, h * w, &df, &mut dg);

            let (xv, dav, dfv) = (t.upload(&x), t.upload(&da), t.upload(&df));
            let (av, dhv, fv, dgv) = (
                t.poisoned(a.len()),
                t.poisoned(x.len()),
                t.poisoned(planes),
                t.poisoned(x.len()),
            );
            let k = &t.k.pool;
            let gpu = &t.gpu;
            let mut ops = vec![
                k.max_backward(gpu, planes, (h, w), &xv, &dav, &dhv)
                    .unwrap(),
                k.avg_forward(gpu, planes, h * w, &xv, &fv).unwrap(),
                k.avg_backward(gpu, planes, h * w, &dfv, &dgv).unwrap(),
            ];
            if !a.is_empty() {
                ops.push(k.max_forward(gpu, planes, (h, w), &xv, &av).unwrap());
                t.run(&ops);
                check(close("max", &t.read(&av, a.len()), &a, RTOL))?;
            } else {
                t.run(&ops);
            }
            check(close("max backward", &t.read(&dhv, x.len()), &dh, RTOL))?;
            check(close("average", &t.read(&fv, planes), &f, RTOL))?;
            check(close("average backward", &t.read(&dgv, x.len()), &dg, RTOL))
        })
        .unwrap();
}

#[test]
fn linear_and_loss_match_cpu() {
    let Some(t) = Harness::new() else {
        return;
    };
    let shapes = (1usize..6, 1usize..20, 2usize..7, any::<u64>());
    runner()
        .run(&shapes, |(n, features, classes, seed)| {
            let mut rng = Rng::new(seed);
            let f = normal(&mut rng, n * features);
            let w = normal(&mut rng, classes * features);
            let b = normal(&mut rng, classes);
            let labels: Vec<u32> = (0..n).map(|_| rng.below(classes) as u32).collect();
            let mut logits = vec![0.0; n * classes];
            linear_forward(n, features, classes, &f, &w, &b, &mut logits);
            let mut dl = vec![0.0; logits.len()];
            let (loss, correct) = softmax_cross_entropy(n, classes, &logits, &labels, &mut dl);
            let (mut df, mut dw, mut db) =
                (vec![0.0; f.len()], vec![0.0; w.len()], vec![0.0; classes]);
            linear_backward(
                n,
                features,
                classes,
                &f,
                &w,
                &dl,
                Some(&mut df),
                &mut dw,
                &mut db,
            );

            let g = LinearGeom {
                n,
                features,
                classes,
            };
            let (fv, wv, bv, lv) = (
                t.upload(&f),
                t.upload(&w),
                t.upload(&b),
                t.upload_u32(&labels),
            );
            let (zv, dzv, rows, out) = (
                t.poisoned(logits.len()),
                t.poisoned(dl.len()),
                t.poisoned(2 * n),
                t.poisoned(2),
            );
            let (dfv, dwv, dbv) = (
                t.poisoned(df.len()),
                t.poisoned(dw.len()),
                t.poisoned(classes),
            );
            let gpu = &t.gpu;
            t.run(&[
                t.k.linear.forward(gpu, &g, &fv, &wv, &bv, &zv).unwrap(),
                t.k.loss
                    .softmax_xent(gpu, n, classes, &zv, &lv, &dzv, &rows)
                    .unwrap(),
                t.k.loss.reduce(gpu, n, &rows, &out).unwrap(),
                t.k.linear.backward_input(gpu, &g, &dzv, &wv, &dfv).unwrap(),
                t.k.linear
                    .backward_weight(gpu, &g, &fv, &dzv, &dwv, &dbv)
                    .unwrap(),
            ]);
            check(close("logits", &t.read(&zv, logits.len()), &logits, RTOL))?;
            check(close("dlogits", &t.read(&dzv, dl.len()), &dl, RTOL))?;
            let o = t.read(&out, 2);
            check(close("loss", &o[..1], &[loss], RTOL))?;
            prop_assert_eq!(o[1], correct as f32);
            check(close("df", &t.read(&dfv, df.len()), &df, RTOL))?;
            check(close("dw", &t.read(&dwv, dw.len()), &dw, RTOL))?;
            check(close("db", &t.read(&dbv, classes), &db, RTOL))
        })
        .unwrap();
}

#[test]
fn optimizers_match_cpu() {
    let Some(t) = Harness::new() else {
        return;
    };
    let shapes = (1usize..300, 1u32..5, any::<bool>(), any::<u64>());
    runner()
        .run(&shapes, |(len, step, nesterov, seed)| {
            let mut rng = Rng::new(seed);
            let p = normal(&mut rng, len);
            let g = normal(&mut rng, len);
            let m = normal(&mut rng, len);
            let v: Vec<f32> = (0..len).map(|_| rng.uniform()).collect();
            let mask: Vec<f32> = (0..len)
                .map(|i| if i % 7 == 3 { 0.0 } else { 1.0 })
                .collect();
            let sgd = Sgd {
                lr: 0.05,
                momentum: 0.9,
                weight_decay: 1e-3,
                nesterov,
            };
            let (mut p1, mut b1) = (p.clone(), m.clone());
            for i in 0..len {
                if mask[i] == 1.0 {
                    sgd.step(&mut p1[i..i + 1], &g[i..i + 1], &mut b1[i..i + 1]);
                }
            }
            let adam = Adam::paper();
            let (mut p2, mut m2, mut v2) = (p.clone(), m.clone(), v.clone());
            adam.step(step, &mut p2, &g, &mut m2, &mut v2);

            let gpu = &t.gpu;
            let hyper = gpu.uniform("sgd", 4).unwrap();
            gpu.write_uniform(&hyper, &sgd_words(&sgd));
            let mh = MorphHyper {
                adam,
                t: step,
                ema_alpha: 0.1,
                ema_first: false,
                theta_max: None,
                cross_first: false,
            };
            let ahyper = gpu.uniform("adam", MorphHyper::WORDS).unwrap();
            gpu.write_uniform(&ahyper, &mh.words());
            let loss = t.upload(&[0.5]);
            let (pv, gv, bv, maskv) = (t.upload(&p), t.upload(&g), t.upload(&m), t.upload(&mask));
            let (tv, mv, vv) = (t.upload(&p), t.upload(&m), t.upload(&v));
            t.run(&[
                t.k.optim
                    .sgd(gpu, &hyper, &maskv, &gv, &loss, &pv, &bv)
                    .unwrap(),
                t.k.optim
                    .adam(gpu, &ahyper, &gv, &loss, &tv, &mv, &vv)
                    .unwrap(),
            ]);
            check(close("sgd params", &t.read(&pv, len), &p1, RTOL))?;
            check(close("sgd momentum", &t.read(&bv, len), &b1, RTOL))?;
            check(close("adam theta", &t.read(&tv, len), &p2, RTOL))?;
            check(close("adam m", &t.read(&mv, len), &m2, RTOL))?;
            check(close("adam v", &t.read(&vv, len), &v2, RTOL))
        })
        .unwrap();
}

#[test]
fn updates_are_skipped_on_a_non_finite_loss() {
    let Some(t) = Harness::new() else {
        return;
    };
    let gpu = &t.gpu;
    let sgd = Sgd::paper(0.1);
    let hyper = gpu.uniform("sgd", 4).unwrap();
    gpu.write_uniform(&hyper, &sgd_words(&sgd));
    let p = vec![1.0f32; aligned(5)];
    let (pv, gv, bv, maskv) = (t.upload(&p), t.upload(&p), t.upload(&p), t.upload(&p));
    let loss = t.upload(&[f32::NAN]);
    t.run(&[t
        .k
        .optim
        .sgd(gpu, &hyper, &maskv, &gv, &loss, &pv, &bv)
        .unwrap()]);
    assert_eq!(t.read(&pv, p.len()), p);
}

/// A morphism state with these layer widths, for its cross-term bookkeeping.
fn joint_state(widths: &[usize]) -> sprout_core::learn::MorphState {
    let per_channel = || widths.iter().map(|&c| vec![0.0; c]).collect::<Vec<_>>();
    sprout_core::learn::MorphState {
        theta: Vec::new(),
        adam_m: Vec::new(),
        adam_v: Vec::new(),
        steps: 0,
        split_ema: per_channel(),
        prune_ema: per_channel(),
        w_norms: per_channel(),
        cross: Vec::new(),
    }
}

#[test]
fn joint_cross_terms_match_cpu() {
    let Some(t) = Harness::new() else {
        return;
    };
    let shapes = (
        prop::collection::vec(1usize..9, 1..4),
        1usize..6,
        any::<u64>(),
    );
    runner()
        .run(&shapes, |(widths, n, seed)| {
            let mut rng = Rng::new(seed);
            let gpu = &t.gpu;
            // Blocks of a larger capacity than the batch, as in a phase.
            let cap = n + 2;
            let blocks = Layout::new(widths.iter().flat_map(|&c| [cap * c; 2]));
            let mut entries = Vec::new();
            for (l, &c) in widths.iter().enumerate() {
                for b in [2 * l, 2 * l + 1] {
                    entries.extend((0..c).map(|ch| (blocks.offsets[b] + ch, c)));
                }
            }
            let k = entries.len();
            let slots = Slots::new(gpu, &entries).unwrap();
            let mut state = joint_state(&widths);
            assert_eq!(state.joint_len(), k);
            let pairs = t.poisoned(k * k);
            let uv = t.poisoned(blocks.total);
            let loss = t.upload(&[0.7]);
            let hyper = gpu.uniform("morph", MorphHyper::WORDS).unwrap();
            let alpha = 0.3;
            let mut batch = Vec::new();
            for step in 0..2u32 {
                // U (n x K) in slot order, and the same values in the blocks.
                let u_mat = normal(&mut rng, n * k);
                let mut flat = vec![0.0; blocks.total];
                for s in 0..n {
                    for (slot, &(o, stride)) in entries.iter().enumerate() {
                        flat[o + s * stride] = u_mat[s * k + slot];
                    }
                }
                gpu.write(&uv, &flat).unwrap();
                let mh = MorphHyper {
                    adam: Adam::paper(),
                    t: step + 1,
                    ema_alpha: alpha,
                    ema_first: step == 0,
                    theta_max: None,
                    cross_first: step == 0,
                };
                gpu.write_uniform(&hyper, &mh.words());
                t.run(&[t
                    .k
                    .estimator
                    .cross(gpu, &hyper, n, &slots, &uv, &loss, &pairs)
                    .unwrap()]);
                state.steps = step;
                state.update_cross(&u_mat, n, 0.7, alpha, &mut batch);
                check(close(
                    "cross terms",
                    &t.read(&pairs, k * k),
                    &state.cross,
                    RTOL,
                ))?;
            }
            // A batch with an unusable loss leaves the average alone.
            let before = t.read(&pairs, k * k);
            gpu.write(&loss, &[f32::NAN]).unwrap();
            t.run(&[t
                .k
                .estimator
                .cross(gpu, &hyper, n, &slots, &uv, &loss, &pairs)
                .unwrap()]);
            prop_assert_eq!(t.read(&pairs, k * k), before);
            // Shapes are checked before anything is recorded.
            let short = t.poisoned(k * k - 1);
            let est = &t.k.estimator;
            prop_assert!(est
                .cross(gpu, &hyper, n, &slots, &uv, &loss, &short)
                .is_err());
            prop_assert!(est
                .cross(gpu, &hyper, blocks.total + 1, &slots, &uv, &loss, &pairs)
                .is_err());
            prop_assert!(est
                .cross(gpu, &hyper, 0, &slots, &uv, &loss, &pairs)
                .is_err());
            Ok(())
        })
        .unwrap();
}
