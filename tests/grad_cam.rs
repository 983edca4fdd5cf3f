//! Grad-CAM points at the evidence: on images whose class is decided by one
//! region (a red or a green square in one quadrant of the image, the rest
//! grey noise), the heat-map of the predicted class peaks in that cell —
//! for MobileNetV2 (ImageNet weights, frozen) and ResNet-18 (random
//! weights, frozen: the head alone has to find the colour).

use std::path::Path;

use tlab::train::Silent;
use tlab::Lab;

const SIZE: u32 = 192;
const CELL: u32 = SIZE / 2;

/// Writes `n` images per class; image `i` has its square in quadrant `i % 4`.
fn make_data(root: &Path, split: &str, n: usize, seed: u64) {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as u8
    };
    for (class, colour) in [("green", [30u8, 200, 40]), ("red", [210u8, 30, 30])] {
        let dir = root.join(split).join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..n {
            let cell = (i + class.len()) % 4;
            let (cx, cy) = ((cell % 2) as u32 * CELL, (cell / 2) as u32 * CELL);
            let img = image::RgbImage::from_fn(SIZE, SIZE, |x, y| {
                let inside = (cx + 8..cx + CELL - 8).contains(&x) && (cy + 8..cy + CELL - 8).contains(&y);
                if inside {
                    image::Rgb(colour)
                } else {
                    let g = 90 + next() / 4;
                    image::Rgb([g, g, g])
                }
            });
            img.save(dir.join(format!("{i}-cell{cell}.png"))).unwrap();
        }
    }
}

fn peaks_in_the_square(arch: &str, weights: Option<&Path>, tag: &str) {
    let dir = std::env::temp_dir().join(format!("tlab-gradcam-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    make_data(&dir.join("data"), "train", 32, 1);
    make_data(&dir.join("data"), "valid", 12, 2);
    let weights_line = weights.map(|w| format!("weights = \"{}\"\n", w.display())).unwrap_or_default();
    let recipe = format!(
        "name = \"gradcam\"\nseed = 3\n[data]\ntrain = \"data/train\"\nvalid = \"data/valid\"\nimage_size = {SIZE}\nbatch_size = 12\n\
         [[step]]\nkind = \"backbone\"\narch = \"{arch}\"\n{weights_line}\
         [[step]]\nkind = \"freeze\"\n[[step]]\nkind = \"fine_tune\"\nepochs = 6\nlr = 0.01\n[[step]]\nkind = \"evaluate\"\n"
    );
    std::fs::write(dir.join("r.toml"), recipe).unwrap();
    let mut lab = Lab::open(dir.join("r.toml")).unwrap();
    lab.run_rest(&mut Silent).unwrap();
    let accuracy = lab.evaluation().ok().unwrap().metrics.accuracy;
    assert!(accuracy >= 0.9, "{arch}: the model did not learn the colours ({accuracy})");
    let model = lab.model().unwrap();
    let data = lab.data().unwrap();
    let preprocess = model.backbone.preprocess();
    let mut hits = 0;
    for (i, path) in data.valid.paths.iter().enumerate() {
        let e = tlab::explain::explain_pixels(
            model,
            &preprocess,
            &data.valid.pixels.get(i).unwrap(),
            &data.classes,
            None,
            None,
        )
        .unwrap();
        let cell: usize = path.file_stem().unwrap().to_string_lossy().rsplit("cell").next().unwrap().parse().unwrap();
        // The square covers this range of map cells in each direction.
        let (w, h) = (e.map.width, e.map.height);
        let (xs, ys) = ((cell % 2) * w / 2..(cell % 2 + 1) * w / 2, (cell / 2) * h / 2..(cell / 2 + 1) * h / 2);
        if xs.contains(&e.peak.0) && ys.contains(&e.peak.1) {
            hits += 1;
        }
    }
    let n = data.valid.len();
    eprintln!("{arch}: accuracy {accuracy:.3}, Grad-CAM peak in the square on {hits}/{n} images");
    assert!(hits * 10 >= n * 8, "{arch}: the peak is in the square on only {hits} of {n} images");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn grad_cam_peaks_in_the_deciding_region_mobilenet_v2() {
    peaks_in_the_square("mobilenet_v2", Some(&tlab::predict::shipped_imagenet_weights()), "mnv2");
}

#[test]
fn grad_cam_peaks_in_the_deciding_region_resnet18() {
    peaks_in_the_square("resnet18", None, "r18");
}
