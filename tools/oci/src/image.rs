//! The image: layer, config and manifest blobs, built deterministically.

use std::io::Write;
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::{Compression, GzBuilder};
use serde_json::json;
use sha2::{Digest, Sha256};

pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

pub struct Blob {
    pub digest: String,
    pub bytes: Vec<u8>,
}

impl Blob {
    fn new(bytes: Vec<u8>) -> Blob {
        Blob { digest: sha256(&bytes), bytes }
    }
}

pub struct Image {
    pub layer: Blob,
    pub config: Blob,
    pub manifest: Blob,
    pub manifest_digest: String,
}

pub fn sha256(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

impl Image {
    pub fn build(wasm: &[u8]) -> Image {
        let tar = tar_one_file("plugin.wasm", wasm);
        let layer = Blob::new(gzip(&tar));
        let config = Blob::new(
            serde_json::to_vec(&json!({
                "architecture": "wasm",
                "os": "wasip1",
                "rootfs": { "type": "layers", "diff_ids": [sha256(&tar)] },
            }))
            .unwrap_or_default(),
        );
        let manifest = Blob::new(
            serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": MANIFEST_TYPE,
                "config": { "mediaType": CONFIG_TYPE, "digest": config.digest, "size": config.bytes.len() },
                "layers": [{ "mediaType": LAYER_TYPE, "digest": layer.digest, "size": layer.bytes.len() }],
                "annotations": { "module.wasm.image/variant": "compat" },
            }))
            .unwrap_or_default(),
        );
        let manifest_digest = manifest.digest.clone();
        Image { layer, config, manifest, manifest_digest }
    }

    /// An OCI image layout directory.
    pub fn write_layout(&self, dir: &Path) -> std::io::Result<()> {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs)?;
        for blob in [&self.layer, &self.config, &self.manifest] {
            std::fs::write(blobs.join(blob.digest.trim_start_matches("sha256:")), &blob.bytes)?;
        }
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let index = json!({
            "schemaVersion": 2,
            "manifests": [{ "mediaType": MANIFEST_TYPE, "digest": self.manifest.digest, "size": self.manifest.bytes.len() }],
        });
        std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap_or_default())
    }
}

/// A ustar archive of one regular file: mode 0644, owner 0:0, mtime 0.
fn tar_one_file(name: &str, data: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |field: &mut [u8], value: u64| {
        let text = format!("{value:0width$o}\0", width = field.len() - 1);
        field.copy_from_slice(text.as_bytes());
    };
    octal(&mut header[100..108], 0o644);
    octal(&mut header[108..116], 0);
    octal(&mut header[116..124], 0);
    octal(&mut header[124..136], data.len() as u64);
    octal(&mut header[136..148], 0);
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    // The checksum is computed with its own field as spaces.
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = header.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc: GzEncoder<Vec<u8>> = GzBuilder::new().mtime(0).write(Vec::new(), Compression::best());
    let _ = enc.write_all(bytes);
    enc.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_well_formed() {
        let a = Image::build(b"\0asm fake module");
        let b = Image::build(b"\0asm fake module");
        assert_eq!(a.manifest_digest, b.manifest_digest, "same wasm, same digest");
        assert_ne!(a.manifest_digest, Image::build(b"\0asm other").manifest_digest);
        let tar = tar_one_file("plugin.wasm", b"hello");
        assert_eq!(tar.len(), 512 + 512 + 1024);
        assert_eq!(&tar[..11], b"plugin.wasm");
        assert_eq!(&tar[512..517], b"hello");
        // the header checksum checks out
        let mut h = tar[..512].to_vec();
        let stored = u32::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
        h[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, h.iter().map(|&b| u32::from(b)).sum::<u32>());
        let m: serde_json::Value = serde_json::from_slice(&a.manifest.bytes).unwrap();
        assert_eq!(m["layers"][0]["mediaType"], LAYER_TYPE);
        assert_eq!(m["config"]["mediaType"], CONFIG_TYPE);
        assert_eq!(m["annotations"]["module.wasm.image/variant"], "compat");
    }
}
