//! `[data] csv`: labels come from the CSV, not from the folders the images
//! happen to sit in; bad rows are listed with their line and skipped; the
//! `test` rows make a test split that `evaluate split = "test"` reports on.

mod common;

use tlab::data::Dataset;
use tlab::lab::StepOutput;
use tlab::train::Silent;
use tlab::Lab;

#[test]
fn csv_labels_override_the_folders_and_bad_rows_are_listed() {
    let dir = std::env::temp_dir().join(format!("tlab-csv-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    common::colour_squares(&dir.join("data"), 4, 16, 4, 2);
    // The CSV calls every blue image "cold" and every red one "warm", whatever their folder;
    // green images are left out; the valid split comes from the CSV's own rows.
    let mut csv = String::from("path,label,split\n");
    for split in ["train", "valid"] {
        for (folder, label) in [("blue", "cold"), ("red", "warm")] {
            for i in 0..if split == "train" { 4 } else { 2 } {
                csv.push_str(&format!("{split}/{folder}/{i}.png,{label},{split}\n"));
            }
        }
    }
    csv.push_str("train/blue/missing.png,cold,train\n"); // line 14: no such file
    csv.push_str("train/red/0.png,warm,holdout\n"); // line 15: unknown split
    csv.push_str("valid/green/0.png,leaf,valid\n"); // line 16: class without training rows
    csv.push_str("\"valid/green/1.png\",\"warm\",test\n"); // quoted fields, a test row
    std::fs::write(dir.join("data/labels.csv"), csv).unwrap();
    let recipe = "name = \"csv\"\n[data]\ncsv = \"data/labels.csv\"\nimage_size = 32\n\
                  [[step]]\nkind = \"backbone\"\narch = \"mobilenet_v2\"\n[[step]]\nkind = \"freeze\"\n\
                  [[step]]\nkind = \"fine_tune\"\nepochs = 1\n\
                  [[step]]\nkind = \"evaluate\"\nsplit = \"test\"\n";
    std::fs::write(dir.join("r.toml"), recipe).unwrap();
    let r = tlab::recipe::load(dir.join("r.toml")).unwrap();
    assert_eq!(r.data.train, dir.join("data"), "images live beside the CSV");

    let data = Dataset::load(&r.data, r.seed).unwrap();
    assert_eq!(data.classes, ["cold", "warm"]);
    assert_eq!((data.train.len(), data.valid.len()), (8, 4));
    for (path, &label) in data.train.paths.iter().zip(&data.train.labels) {
        let folder = path.parent().unwrap().file_name().unwrap().to_str().unwrap();
        assert_eq!(data.classes[label], if folder == "blue" { "cold" } else { "warm" }, "{}", path.display());
    }
    let reasons: Vec<&str> = data.skipped.iter().map(|(_, why)| why.as_str()).collect();
    assert!(reasons.iter().any(|w| w.contains(":14: no such file")), "{reasons:?}");
    assert!(reasons.iter().any(|w| w.contains(":15: unknown split `holdout`")), "{reasons:?}");
    assert!(reasons.iter().any(|w| w.contains("class `leaf` has no training rows")), "{reasons:?}");
    let test = data.test.as_ref().unwrap();
    assert_eq!(test.len(), 1);
    assert!(test.paths[0].ends_with("valid/green/1.png"));

    // The lab evaluates the test split: one image.
    let mut lab = Lab::open(dir.join("r.toml")).unwrap();
    lab.run_rest(&mut Silent).unwrap();
    let StepOutput::Evaluate(e) = &lab.result(3).unwrap().output else { panic!() };
    assert_eq!(e.metrics.count, 1);

    // A CSV without the columns is one clear error naming the file.
    std::fs::write(dir.join("data/labels.csv"), "file,class\na.png,x\n").unwrap();
    let err = Dataset::load(&r.data, r.seed).unwrap_err().to_string();
    assert!(err.contains("labels.csv") && err.contains("`path` and `label`"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
