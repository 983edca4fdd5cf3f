//! A re-run that fails keeps the last good state: replacing the weights file
//! with a broken one and re-running the backbone step gives an error, and the
//! model, results and later steps stay as they were.

mod common;

use tlab::train::Silent;
use tlab::Lab;

#[test]
fn failed_rerun_keeps_the_last_good_state() {
    let dir = std::env::temp_dir().join(format!("tlab-rerun-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    common::colour_squares(&dir.join("data"), 5, 16, 6, 3);
    let weights = dir.join("w.safetensors");
    std::fs::copy(tlab::predict::shipped_imagenet_weights(), &weights).unwrap();
    let recipe = "name = \"rerun\"\n[data]\ntrain = \"data/train\"\nvalid = \"data/valid\"\nimage_size = 32\n\
                  [[step]]\nkind = \"backbone\"\narch = \"mobilenet_v2\"\nweights = \"w.safetensors\"\n\
                  [[step]]\nkind = \"freeze\"\n[[step]]\nkind = \"fine_tune\"\nepochs = 1\n[[step]]\nkind = \"evaluate\"\n";
    std::fs::write(dir.join("r.toml"), recipe).unwrap();
    let mut lab = Lab::open(dir.join("r.toml")).unwrap();
    lab.run_all(&mut Silent).unwrap();
    let before: Vec<f32> = lab.model().unwrap().named_vars()[0].1.flatten_all().unwrap().to_vec1().unwrap();
    let accuracy = lab.last_evaluation().unwrap().metrics.accuracy;

    std::fs::write(&weights, b"no longer weights").unwrap();
    let err = lab.run_step(0, &mut Silent).unwrap_err().to_string();
    assert!(err.contains("w.safetensors"), "{err}");

    assert!(lab.model().is_some(), "the model survives the failed re-run");
    let after: Vec<f32> = lab.model().unwrap().named_vars()[0].1.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(before, after);
    assert!((0..4).all(|i| lab.result(i).is_some()), "results are kept");
    assert_eq!(lab.last_evaluation().unwrap().metrics.accuracy, accuracy);
    // And the lab still works: re-running evaluate from the kept state.
    lab.run_step(3, &mut Silent).unwrap();
    assert_eq!(lab.last_evaluation().unwrap().metrics.accuracy, accuracy);
    let _ = std::fs::remove_dir_all(&dir);
}
