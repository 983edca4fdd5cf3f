//! The notebook-cell API end to end on a tiny data set: a recipe built in
//! code, stepping through it with owned results, and every notebook view of a
//! real run (the views' own details are unit-tested in `src/notebook/`).

use std::path::{Path, PathBuf};

use tlab::lab::cells::{Progress, StepStatus};
use tlab::lab::StepOutput;
use tlab::recipe::{RecipeBuilder, StepType};
use tlab::Lab;

fn make_data(root: &Path) {
    for (split, n) in [("train", 6), ("valid", 3)] {
        for (c, name) in ["dark", "light"].iter().enumerate() {
            let dir = root.join(split).join(name);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let v = 40 + 150 * c as u8 + 5 * i as u8;
                image::RgbImage::from_fn(20, 20, |x, _| image::Rgb([v, v.wrapping_add(x as u8), v]))
                    .save(dir.join(format!("{i}.png")))
                    .unwrap();
            }
        }
    }
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tlab-cells-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Takes a value a notebook cell would bind with a top-level `let`: evcxr
/// keeps only values that borrow nothing and can move between threads.
fn keep<T: 'static + Send + Sync>(value: T) -> T {
    value
}

#[test]
fn step_through_a_built_recipe() {
    let dir = tempdir("steps");
    make_data(&dir);
    let weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/weights/mobilenet_v2.safetensors");
    let builder = RecipeBuilder::new("cells")
        .base_dir(&dir)
        .seed(3)
        .data(|d| d.train("train").valid("valid").image_size(32).batch_size(4))
        .backbone("mobilenet_v2", weights.as_path())
        .freeze_all()
        .augment(|a| a.horizontal_flip(true).rotation_range(10.0))
        .fine_tune(|f| f.epochs(2).lr(1e-3))
        .evaluate_with(|e| e.mistakes(3));
    assert!(builder.to_toml().contains("kind = \"fine_tune\"\nepochs = 2"), "{}", builder.to_toml());
    let mut lab = Lab::new(builder.build().expect("valid recipe"));

    let steps = lab.steps();
    assert_eq!(steps.steps.len(), 5);
    assert!(steps.steps.iter().all(|s| s.status == StepStatus::Pending));
    assert!(lab.evaluation().is_err(), "nothing evaluated yet");
    assert!(lab.augmented_samples(4, 0).is_err(), "no data yet");

    let mut quiet = Progress::new().every(0);
    let first = lab.run_next(&mut quiet).expect("backbone");
    assert!(matches!(first.output, StepOutput::Backbone { ref classes, .. } if classes.len() == 2));
    let to_augment = lab.run_to(2, &mut quiet).expect("freeze and augment");
    assert_eq!(to_augment.iter().map(|r| r.kind).collect::<Vec<_>>(), [StepType::Freeze, StepType::Augment]);
    assert_eq!(lab.steps().next(), Some(3));

    let rest = lab.run_rest(&mut quiet).expect("train and evaluate");
    assert_eq!(rest.len(), 2);
    assert!(lab.run_next(&mut quiet).is_err(), "every step ran");
    assert_eq!(lab.history().len(), 2);
    let eval = lab.evaluation().expect("evaluated");
    assert_eq!(eval.metrics.count, 6);
    assert!(lab.evaluation_of(4).is_ok());
    assert!(matches!(lab.evaluation_of(3), Err(tlab::Error::NotEvaluate { step: 4 })));
    assert!(matches!(lab.evaluation_of(5), Err(tlab::Error::NoSuchStep { step: 6, steps: 5 })));
    let text = lab.steps().to_string();
    assert!(text.contains("✓  5. evaluate") && text.contains("accuracy"), "{text}");

    // What a notebook binds at a cell's top level is kept by evcxr only if it
    // borrows nothing ('static): every result must outlive the lab's next
    // run. Keep them through a re-run, then read them.
    let kept = (
        keep(lab.evaluation().expect("evaluated")),
        keep(lab.evaluation_of(4).expect("evaluated")),
        keep(lab.result(3).expect("fine_tune ran")),
        keep(lab.history()),
        keep(lab.data().expect("data loaded")),
        keep(lab.steps()),
    );
    #[cfg(feature = "notebook")]
    let views = (keep(lab.confusion().unwrap()), keep(lab.class_report().unwrap()), keep(lab.mistakes(2).unwrap()));

    // Re-running a step replaces its result and forgets later ones.
    let again = keep(lab.run_step(3, &mut quiet).expect("rerun fine_tune"));
    assert_eq!(again.index, 3);
    assert!(lab.result(4).is_err());
    assert_eq!(lab.history().len(), 2, "the old epochs are gone");
    assert!(lab.evaluation().is_err(), "the evaluation after the re-run step is forgotten");
    // … while the values kept before it still read as they did.
    assert_eq!(kept.0.metrics.count, 6);
    assert!(std::sync::Arc::ptr_eq(&kept.0, &kept.1), "shared, not copied");
    assert_eq!(kept.2.kind, StepType::FineTune);
    assert_eq!(kept.3.len(), 2);
    assert_eq!(kept.4.train.len(), 12);
    assert_eq!(kept.5.next(), None);
    #[cfg(feature = "notebook")]
    assert_eq!(views.0.counts.iter().flatten().sum::<usize>(), 6);

    // A failed `.expect` or a top-level `?` shows an error through Debug: the
    // one-line message, not a struct dump.
    let err = lab.evaluation().unwrap_err();
    assert_eq!(format!("{err:?}"), err.to_string());
    assert!(err.to_string().contains("evaluate step"), "{err}");

    #[cfg(feature = "notebook")]
    {
        lab.run_rest(&mut quiet).expect("evaluate again");
        let chart = lab.history_chart().to_html().unwrap();
        assert!(chart.contains("data:image/png;base64,"));
        let confusion = lab.confusion().unwrap();
        assert_eq!(confusion.counts.iter().flatten().sum::<usize>(), 6);
        assert!(lab.class_report().unwrap().to_html().contains("dark"));
        let mistakes = lab.mistakes(10).unwrap();
        assert!(mistakes.items.iter().all(|m| m.image.as_ref().is_some_and(|i| i.dimensions() == (32, 32))));
        let samples = lab.augmented_samples(4, 1).unwrap();
        assert_eq!(
            samples.image.dimensions(),
            (2 * 32 + tlab::present::preview::GAP, 2 * 32 + tlab::present::preview::GAP)
        );
        assert!(lab.augmentation_preview(2, 3, 1).unwrap().image.width() > samples.image.width());
        assert!(lab.result(3).unwrap().to_html().unwrap().contains("Step 4 · fine_tune"));
    }
    std::fs::remove_dir_all(dir).unwrap();
}
