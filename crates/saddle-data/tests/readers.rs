//! The readers on small files the tests write themselves: valid files, and every kind of
//! malformed input, each giving its own error (and none panicking).

mod common;

use common::{cifar_records, gzip, idx, mnist_images, mnist_labels, TempDir};
use saddle_data::{cifar10, fashion_mnist, idx as idx_reader, mnist, DataError, Split};

fn write_mnist(dir: &TempDir, n_train: u32, n_test: u32) {
    dir.write("train-images-idx3-ubyte", &mnist_images(n_train));
    dir.write("train-labels-idx1-ubyte", &mnist_labels(n_train));
    dir.write("t10k-images-idx3-ubyte", &mnist_images(n_test));
    dir.write("t10k-labels-idx1-ubyte", &mnist_labels(n_test));
}

#[test]
fn mnist_loads_small_files() {
    let dir = TempDir::new("mnist-ok");
    write_mnist(&dir, 5, 3);
    let train = mnist::load(dir.path(), Split::Train).unwrap();
    assert_eq!(train.shape, [5, 1, 28, 28]);
    assert_eq!(train.labels, vec![0, 1, 2, 3, 4]);
    assert_eq!(train.name, "mnist/train");
    // pixel (image 2, position 10) = 12 / 255
    assert_eq!(train.image(2)[10], 12.0 / 255.0);
    assert!(train.images.iter().all(|&v| (0.0..=1.0).contains(&v)));
    let test = mnist::load(dir.path(), Split::Test).unwrap();
    assert_eq!(test.len(), 3);
    let fashion = fashion_mnist::load(dir.path(), Split::Test).unwrap();
    assert_eq!(fashion.name, "fashion-mnist/test");
}

#[test]
fn gzip_files_load_like_raw_ones() {
    let dir = TempDir::new("mnist-gz");
    dir.write("train-images-idx3-ubyte.gz", &gzip(&mnist_images(4)));
    dir.write("train-labels-idx1-ubyte.gz", &gzip(&mnist_labels(4)));
    let raw = TempDir::new("mnist-raw");
    write_mnist(&raw, 4, 1);
    assert_eq!(
        mnist::load(dir.path(), Split::Train).unwrap().images,
        mnist::load(raw.path(), Split::Train).unwrap().images
    );
}

#[test]
fn cifar_loads_small_files() {
    let dir = TempDir::new("cifar-ok");
    for (i, f) in cifar10::file_names(Split::Train).iter().enumerate() {
        dir.write(&format!("cifar-10-batches-bin/{f}"), &cifar_records(2 + i));
    }
    dir.write("cifar-10-batches-bin/test_batch.bin", &cifar_records(3));
    let train = cifar10::load(dir.path(), Split::Train).unwrap();
    assert_eq!(train.shape, [2 + 3 + 4 + 5 + 6, 3, 32, 32]);
    // image 1 of batch 1: R plane = 1/255, G = 2/255, B = 3/255
    let img = train.image(1);
    assert_eq!(
        (img[0], img[1024], img[2048]),
        (1.0 / 255.0, 2.0 / 255.0, 3.0 / 255.0)
    );
    // also accepts the batches folder itself
    let test = cifar10::load(dir.path().join("cifar-10-batches-bin"), Split::Test).unwrap();
    assert_eq!(test.labels, vec![0, 1, 2]);
}

/// Runs the images reader on `bytes`, raw from a file.
fn images_err(bytes: &[u8]) -> DataError {
    let dir = TempDir::new("bad-images");
    let p = dir.write("images", bytes);
    idx_reader::read_images(&p).unwrap_err()
}

fn labels_err(bytes: &[u8]) -> DataError {
    let dir = TempDir::new("bad-labels");
    let p = dir.write("labels", bytes);
    let e = idx_reader::read_labels(&p, 10).unwrap_err();
    assert!(
        e.to_string().contains("labels"),
        "error names the file: {e}"
    );
    e
}

#[test]
fn empty_file() {
    assert!(matches!(images_err(&[]), DataError::Empty { .. }));
    assert!(matches!(labels_err(&[]), DataError::Empty { .. }));
    let dir = TempDir::new("empty-cifar");
    let p = dir.write("data_batch_1.bin", &[]);
    assert!(matches!(
        cifar10::read_batch(&p),
        Err(DataError::Empty { .. })
    ));
}

#[test]
fn truncated() {
    let full = mnist_images(3);
    for cut in [1, 3, 4, 10, 15, 16, 17, full.len() - 1] {
        let e = images_err(&full[..cut]);
        assert!(
            matches!(e, DataError::Truncated { .. }),
            "cut at {cut}: {e}"
        );
    }
    let labels = mnist_labels(5);
    assert!(matches!(
        labels_err(&labels[..labels.len() - 2]),
        DataError::Truncated { .. }
    ));
    let dir = TempDir::new("trunc-cifar");
    let rec = cifar_records(2);
    let p = dir.write("b.bin", &rec[..rec.len() - 1]);
    assert!(matches!(
        cifar10::read_batch(&p),
        Err(DataError::BadLength { .. })
    ));
}

#[test]
fn trailing_data() {
    let mut b = mnist_images(1);
    b.push(0);
    assert!(matches!(images_err(&b), DataError::TrailingData { .. }));
}

#[test]
fn wrong_magic() {
    let e = images_err(&idx(0x0000_0903, &[1, 28, 28], &[0; 784]));
    assert!(
        matches!(
            e,
            DataError::BadMagic {
                found: 0x903,
                expected: 0x803,
                ..
            }
        ),
        "{e}"
    );
    assert!(matches!(
        images_err(b"GIF89a......................"),
        DataError::BadMagic { .. }
    ));
    assert!(matches!(
        labels_err(&idx(0x0100_0801, &[1], &[0])),
        DataError::BadMagic { .. }
    ));
}

#[test]
fn wrong_dimension_count() {
    // A labels file given to the images reader, and vice versa.
    let e = images_err(&mnist_labels(3));
    assert!(
        matches!(
            e,
            DataError::BadDimensionCount {
                found: 1,
                expected: 3,
                ..
            }
        ),
        "{e}"
    );
    let e = labels_err(&mnist_images(1));
    assert!(
        matches!(
            e,
            DataError::BadDimensionCount {
                found: 3,
                expected: 1,
                ..
            }
        ),
        "{e}"
    );
    assert!(matches!(
        images_err(&idx(0x804, &[1, 1, 1, 1], &[0])),
        DataError::BadDimensionCount { .. }
    ));
}

#[test]
fn overflowing_dimensions() {
    // 2^31 × 2^31 images of 28×28: the product overflows u64.
    let e = images_err(&idx(0x803, &[1 << 31, 1 << 31, 28 * 28], &[]));
    assert!(matches!(e, DataError::Overflow { .. }), "{e}");
    // 2^31 × 2^31 × 1 fits in u64 but not in the file: no allocation, an error.
    let e = images_err(&idx(0x803, &[1 << 31, 1 << 31, 1], &[1, 2, 3]));
    assert!(matches!(e, DataError::Truncated { .. }), "{e}");
    // The same inside gzip: rejected before decompressing the payload.
    let dir = TempDir::new("overflow-gz");
    let p = dir.write(
        "x.gz",
        &gzip(&idx(0x803, &[1 << 31, 1 << 31, 1], &[0; 100])),
    );
    let e = idx_reader::read_images(&p).unwrap_err();
    assert!(matches!(e, DataError::Implausible { .. }), "{e}");
}

#[test]
fn label_out_of_range() {
    let e = labels_err(&idx(0x801, &[4], &[0, 9, 10, 3]));
    assert!(
        matches!(
            e,
            DataError::LabelOutOfRange {
                index: 2,
                label: 10,
                classes: 10,
                ..
            }
        ),
        "{e}"
    );
    let mut rec = cifar_records(3);
    rec[2 * 3073] = 200;
    let dir = TempDir::new("label-cifar");
    let p = dir.write("b.bin", &rec);
    let e = cifar10::read_batch(&p).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::LabelOutOfRange {
                index: 2,
                label: 200,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn bad_gzip() {
    // gzip magic followed by garbage
    let e = images_err(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xff, 0xff, 0xff, 0x00]);
    assert!(matches!(e, DataError::Gzip { .. }), "{e}");
    // a valid stream cut short
    let gz = gzip(&mnist_images(2));
    let e = images_err(&gz[..gz.len() / 2]);
    assert!(
        matches!(e, DataError::Gzip { .. } | DataError::Truncated { .. }),
        "{e}"
    );
    // a corrupted CRC in the trailer
    let mut gz = gzip(&mnist_labels(10));
    let n = gz.len();
    gz[n - 8] ^= 0xff;
    assert!(matches!(labels_err(&gz), DataError::Gzip { .. }));
    // a gzip of nothing
    assert!(matches!(images_err(&gzip(&[])), DataError::Empty { .. }));
}

#[test]
fn wrong_image_size_and_count_mismatch() {
    let dir = TempDir::new("mnist-shape");
    dir.write("train-images-idx3-ubyte", &idx(0x803, &[1, 2, 2], &[0; 4]));
    dir.write("train-labels-idx1-ubyte", &mnist_labels(1));
    assert!(matches!(
        mnist::load(dir.path(), Split::Train),
        Err(DataError::BadShape { .. })
    ));
    dir.write("train-images-idx3-ubyte", &mnist_images(2));
    let e = mnist::load(dir.path(), Split::Train).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::CountMismatch {
                images: 2,
                labels: 1,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn missing_data_says_how_to_download() {
    let dir = TempDir::new("missing");
    let e = mnist::load(dir.path().join("mnist"), Split::Train).unwrap_err();
    assert!(e.to_string().contains("cargo xtask download mnist"), "{e}");
    let e = fashion_mnist::load(dir.path(), Split::Test).unwrap_err();
    assert!(
        e.to_string().contains("cargo xtask download fashion-mnist"),
        "{e}"
    );
    let e = cifar10::load(dir.path(), Split::Test).unwrap_err();
    assert!(
        e.to_string().contains("cargo xtask download cifar10"),
        "{e}"
    );
}
