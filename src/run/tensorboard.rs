//! TensorBoard event files (`tb/events.out.tfevents.*`), written without
//! TensorFlow: scalars, PNG images and text, as TensorBoard's own readers
//! (`EventAccumulator`, the web UI) expect them.
//!
//! An event file is a sequence of records, each `u64 length (LE)`,
//! `u32 masked CRC-32C of the length`, the bytes of one `Event` protobuf and
//! `u32 masked CRC-32C of the bytes`. The messages are the few fields of
//! TensorFlow's `event.proto` / `summary.proto` that tlab writes, encoded with
//! `prost` (field numbers as in those files).
//!
//! The file is written as the run goes (TensorBoard shows a run live) and
//! flushed after every epoch. A run killed mid-write leaves a valid prefix:
//! every record carries its own length and checksums, and readers stop at a
//! truncated last record.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::train::{EpochRecord, Event};

/// `tensorflow.Event`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EventProto {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(string, optional, tag = "3")]
    pub file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    pub summary: Option<Summary>,
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
    #[prost(message, optional, tag = "4")]
    pub image: Option<SummaryImage>,
    #[prost(message, optional, tag = "8")]
    pub tensor: Option<TensorProto>,
    #[prost(message, optional, tag = "9")]
    pub metadata: Option<SummaryMetadata>,
}

/// `tensorflow.Summary.Image`: an encoded (PNG) image.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryImage {
    #[prost(int32, tag = "1")]
    pub height: i32,
    #[prost(int32, tag = "2")]
    pub width: i32,
    /// 3 = RGB.
    #[prost(int32, tag = "3")]
    pub colorspace: i32,
    #[prost(bytes = "vec", tag = "4")]
    pub encoded_image_string: Vec<u8>,
}

/// `tensorflow.SummaryMetadata`: which plugin shows a tensor summary.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryMetadata {
    #[prost(message, optional, tag = "1")]
    pub plugin_data: Option<PluginData>,
}

/// `tensorflow.SummaryMetadata.PluginData`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PluginData {
    #[prost(string, tag = "1")]
    pub plugin_name: String,
}

/// `tensorflow.TensorProto`, for a scalar string (the text plugin).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    /// 7 = DT_STRING.
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    #[prost(message, optional, tag = "2")]
    pub tensor_shape: Option<TensorShape>,
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub string_val: Vec<Vec<u8>>,
}

/// `tensorflow.TensorShapeProto` (empty: a scalar).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShape {}

/// The CRC TensorFlow's record format stores: CRC-32C rotated and offset,
/// so that a CRC of data containing CRCs is not degenerate.
fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One record around `data`.
fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// Reads the events of a file back, checking every length and CRC; stops
/// at a truncated last record, as TensorBoard does. For tests and tools.
pub fn read_events(path: &Path) -> Result<Vec<EventProto>> {
    use prost::Message;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |what: &str| Error::data(path, format!("not a TensorBoard event file: {what}"));
    let mut events = Vec::new();
    let mut at = 0usize;
    while at + 12 <= bytes.len() {
        let len_bytes = &bytes[at..at + 8];
        let crc = u32::from_le_bytes([bytes[at + 8], bytes[at + 9], bytes[at + 10], bytes[at + 11]]);
        if crc != masked_crc(len_bytes) {
            return Err(bad("length checksum"));
        }
        let len = u64::from_le_bytes(len_bytes.try_into().map_err(|_| bad("length"))?) as usize;
        let start = at + 12;
        let Some(end) = start.checked_add(len).filter(|e| e + 4 <= bytes.len()) else { break };
        let data = &bytes[start..end];
        let crc = u32::from_le_bytes([bytes[end], bytes[end + 1], bytes[end + 2], bytes[end + 3]]);
        if crc != masked_crc(data) {
            return Err(bad("data checksum"));
        }
        events.push(EventProto::decode(data).map_err(|e| bad(&e.to_string()))?);
        at = end + 4;
    }
    Ok(events)
}

/// Appends events to one `events.out.tfevents.*` file in a folder.
pub(crate) struct EventWriter {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    /// Epochs logged so far over every fine_tune step: the x axis of the
    /// per-epoch scalars, as history.csv's rows are numbered.
    epochs: i64,
    /// Training batches so far over every step: the x axis of per-batch loss.
    batches: i64,
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

impl EventWriter {
    /// Creates `dir` and a new event file in it (named as TensorFlow names
    /// them, so several runs or resumptions in one folder sit side by side).
    pub fn create(dir: &Path) -> Result<EventWriter> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        let host = if host.is_empty() { "localhost".to_string() } else { host };
        let name = format!("events.out.tfevents.{}.{host}.{}.tlab", now() as u64, std::process::id());
        let path = dir.join(name);
        let file = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut w = EventWriter { path, file: std::io::BufWriter::new(file), epochs: 0, batches: 0 };
        w.write(EventProto { wall_time: now(), step: 0, file_version: Some("brain.Event:2".into()), summary: None })?;
        Ok(w)
    }

    fn write(&mut self, event: EventProto) -> Result<()> {
        use prost::Message;
        let bytes = record(&event.encode_to_vec());
        self.file.write_all(&bytes).map_err(|e| Error::io(&self.path, e))
    }

    fn summary(&mut self, step: i64, value: SummaryValue) -> Result<()> {
        self.write(EventProto {
            wall_time: now(),
            step,
            file_version: None,
            summary: Some(Summary { value: vec![value] }),
        })
    }

    /// A scalar point of the `tag` curve.
    pub fn scalar(&mut self, tag: &str, step: i64, value: f64) -> Result<()> {
        self.summary(step, SummaryValue { tag: tag.into(), simple_value: Some(value as f32), ..Default::default() })
    }

    /// An image (PNG bytes of a `width × height` RGB picture).
    pub fn image(&mut self, tag: &str, step: i64, png: Vec<u8>, width: u32, height: u32) -> Result<()> {
        let image =
            SummaryImage { height: height as i32, width: width as i32, colorspace: 3, encoded_image_string: png };
        self.summary(step, SummaryValue { tag: tag.into(), image: Some(image), ..Default::default() })
    }

    /// Text for TensorBoard's text plugin (Markdown is rendered there).
    pub fn text(&mut self, tag: &str, step: i64, text: &str) -> Result<()> {
        let tensor =
            TensorProto { dtype: 7, tensor_shape: Some(TensorShape {}), string_val: vec![text.as_bytes().to_vec()] };
        let metadata = SummaryMetadata { plugin_data: Some(PluginData { plugin_name: "text".into() }) };
        self.summary(
            step,
            SummaryValue { tag: tag.into(), tensor: Some(tensor), metadata: Some(metadata), ..Default::default() },
        )
    }

    /// The five per-epoch curves of one history row (`epoch/…`).
    pub fn epoch(&mut self, r: &EpochRecord) -> Result<()> {
        self.epochs += 1;
        let step = self.epochs;
        for (tag, v) in [
            ("epoch/train_loss", r.train_loss),
            ("epoch/valid_loss", r.valid_loss),
            ("epoch/train_accuracy", r.train_accuracy),
            ("epoch/valid_accuracy", r.valid_accuracy),
            ("epoch/lr", r.lr),
        ] {
            self.scalar(tag, step, v)?;
        }
        self.flush()
    }

    /// Logs what a training [`Event`] carries: the running loss per batch
    /// (`batch/train_loss`) and every epoch.
    pub(crate) fn observe(&mut self, event: &Event) -> Result<()> {
        match event {
            Event::Batch { loss, lr, .. } => {
                self.batches += 1;
                self.scalar("batch/train_loss", self.batches, *loss)?;
                self.scalar("batch/lr", self.batches, *lr)
            }
            Event::Epoch(r) => self.epoch(r),
            _ => Ok(()),
        }
    }

    /// Continues the epoch numbering after `n` epochs already logged (a
    /// resumed run).
    pub(crate) fn skip_epochs(&mut self, n: usize) {
        self.epochs += n as i64;
    }

    pub fn flush(&mut self) -> Result<()> {
        self.file.flush().map_err(|e| Error::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_crc_matches_tensorflow() {
        // crc32c("") = 0, masked as TensorFlow does.
        assert_eq!(masked_crc(b""), 0xa282_ead8);
        // crc32c("123456789") = 0xE3069283 (the standard check value).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(masked_crc(b"123456789"), 0xE306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8));
    }

    #[test]
    fn events_round_trip_and_a_truncated_tail_is_ignored() {
        let dir = std::env::temp_dir().join(format!("tlab-tb-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut w = EventWriter::create(&dir).unwrap();
        let r = EpochRecord {
            epoch: 1,
            train_loss: 0.5,
            train_accuracy: 0.75,
            valid_loss: 0.625,
            valid_accuracy: 0.8,
            lr: 1e-3,
            seconds: 1.0,
        };
        w.observe(&Event::Batch { epoch: 1, batch: 1, batches: 2, loss: 0.9, accuracy: 0.5, lr: 1e-3 }).unwrap();
        w.observe(&Event::Epoch(r.clone())).unwrap();
        w.text("recipe", 0, "name = \"x\"").unwrap();
        w.image("confusion", 1, vec![1, 2, 3], 4, 5).unwrap();
        w.flush().unwrap();
        let path = w.path.to_path_buf();
        drop(w);
        let events = read_events(&path).unwrap();
        assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
        let values: Vec<(String, i64, Option<f32>)> = events[1..]
            .iter()
            .flat_map(|e| {
                e.summary.iter().flat_map(move |s| s.value.iter().map(move |v| (v.tag.clone(), e.step, v.simple_value)))
            })
            .collect();
        assert_eq!(values[0], ("batch/train_loss".into(), 1, Some(0.9)));
        assert_eq!(values[1], ("batch/lr".into(), 1, Some(1e-3)));
        assert_eq!(values[2], ("epoch/train_loss".into(), 1, Some(0.5)));
        assert_eq!(values[5], ("epoch/valid_accuracy".into(), 1, Some(0.8)));
        assert_eq!(values.len(), 9);
        // Cut the file inside its last record: the records before it still read.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert_eq!(read_events(&path).unwrap().len(), events.len() - 1);
        // A flipped byte is caught by the checksum.
        let mut bad = bytes.clone();
        bad[20] ^= 0xff;
        std::fs::write(&path, &bad).unwrap();
        assert!(read_events(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
