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
    lab.run_rest(&mut Silent).unwrap();
    let before: Vec<f32> = lab.model().unwrap().named_vars()[0].1.flatten_all().unwrap().to_vec1().unwrap();
    let accuracy = lab.evaluation().ok().unwrap().metrics.accuracy;

    std::fs::write(&weights, b"no longer weights").unwrap();
    let err = lab.run_step(0, &mut Silent).unwrap_err().to_string();
    assert!(err.contains("w.safetensors"), "{err}");

    assert!(lab.model().is_some(), "the model survives the failed re-run");
    let after: Vec<f32> = lab.model().unwrap().named_vars()[0].1.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(before, after);
    assert!((0..4).all(|i| lab.result(i).is_ok()), "results are kept");
    assert_eq!(lab.evaluation().ok().unwrap().metrics.accuracy, accuracy);
    // And the lab still works: re-running evaluate from the kept state.
    lab.run_step(3, &mut Silent).unwrap();
    assert_eq!(lab.evaluation().ok().unwrap().metrics.accuracy, accuracy);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A data folder changed on disk: the lab decodes it again on the next
/// re-run; a change that breaks it (a class left without images) fails that
/// re-run and keeps the last good data, model and results.
#[test]
fn changed_data_is_reloaded_and_broken_data_keeps_the_last_good_state() {
    let dir = std::env::temp_dir().join(format!("tlab-rerun-data-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    common::colour_squares(&dir.join("data"), 6, 16, 6, 3);
    let recipe = "name = \"rerun-data\"\n[data]\ntrain = \"data/train\"\nvalid = \"data/valid\"\nimage_size = 32\n\
                  [[step]]\nkind = \"backbone\"\narch = \"mobilenet_v2\"\n\
                  [[step]]\nkind = \"freeze\"\n[[step]]\nkind = \"fine_tune\"\nepochs = 1\n[[step]]\nkind = \"evaluate\"\n";
    std::fs::write(dir.join("r.toml"), recipe).unwrap();
    let mut lab = Lab::open(dir.join("r.toml")).unwrap();
    lab.run_rest(&mut Silent).unwrap();
    assert_eq!(lab.data().unwrap().train.len(), 18);
    let train = dir.join("data/train");
    let input = tlab::recipe::Input::Data(lab.recipe().data.train.clone());

    // Unchanged on disk, nothing is decoded again.
    lab.run_step(0, &mut Silent).unwrap();
    assert_eq!(lab.data().unwrap().train.len(), 18);

    // Two more images: the re-run sees them.
    for i in 0..2 {
        std::fs::copy(train.join("red/0.png"), train.join(format!("red/new{i}.png"))).unwrap();
    }
    assert_eq!(lab.input_changed(&input), Some(0));
    for i in 0..4 {
        lab.run_step(i, &mut Silent).unwrap();
    }
    assert_eq!(lab.data().unwrap().train.len(), 20);
    let accuracy = lab.evaluation().ok().unwrap().metrics.accuracy;

    // Every image of a class removed: the re-run fails and names the folder.
    for e in std::fs::read_dir(train.join("green")).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    lab.input_changed(&input);
    let err = lab.run_step(0, &mut Silent).unwrap_err().to_string();
    assert!(err.contains("green"), "{err}");
    assert_eq!(lab.data().unwrap().train.len(), 20, "the last good data is kept");
    assert!((0..4).all(|i| lab.result(i).is_ok()), "results are kept");
    assert_eq!(lab.evaluation().ok().unwrap().metrics.accuracy, accuracy);
    let _ = std::fs::remove_dir_all(&dir);
}
