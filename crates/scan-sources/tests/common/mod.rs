//! A sink that keeps everything, for the tests.
#![allow(dead_code)]

use std::io::Read;
use std::sync::Mutex;

use mayfly_scan_sources::{Origin, Sink, SourceError};

/// One item as handed over.
#[derive(Debug, Clone)]
pub struct Item {
    pub origin: Origin,
    pub data: Vec<u8>,
}

/// Keeps every item (its bytes read to the end) and every error.
#[derive(Default)]
pub struct Collect {
    pub items: Mutex<Vec<Item>>,
    pub errors: Mutex<Vec<(String, String)>>,
}

impl Sink for Collect {
    fn item(&self, origin: &Origin, reader: &mut dyn Read) -> std::io::Result<()> {
        let mut data = Vec::new();
        let result = reader.read_to_end(&mut data);
        self.items.lock().unwrap().push(Item {
            origin: origin.clone(),
            data,
        });
        result.map(|_| ())
    }

    fn error(&self, what: &str, err: &SourceError) {
        self.errors
            .lock()
            .unwrap()
            .push((what.to_owned(), err.to_string()));
    }
}

impl Collect {
    pub fn items(&self) -> Vec<Item> {
        let mut items = self.items.lock().unwrap().clone();
        items.sort_by(|a, b| a.origin.path.cmp(&b.origin.path));
        items
    }

    pub fn errors(&self) -> Vec<(String, String)> {
        self.errors.lock().unwrap().clone()
    }

    /// Items whose bytes contain `needle`.
    pub fn with(&self, needle: &str) -> Vec<Item> {
        self.items()
            .into_iter()
            .filter(|i| contains(&i.data, needle.as_bytes()))
            .collect()
    }

    pub fn paths(&self) -> Vec<String> {
        self.items().into_iter().map(|i| i.origin.path).collect()
    }
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}
