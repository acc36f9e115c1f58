//! Model signatures and the GGUF writer (both in inhouse-formats) through their public API, on
//! real files: key files on disk, a signed file verified from its `.sig`, GGUF files written and
//! read back by the one reader, and a LoRA adapter for the real SmolLM2 test model. They run
//! here, with the toolchain's other tests on the real test models, which share `common`.
//!
//! The model lives in `$INHOUSE_MODELS_DIR` (default `~/.cache/inhouse/models`, filled by
//! `scripts/fetch-models`). A missing model fails the test rather than skipping it.

mod common;

use common::{model, SMOLLM2};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use inhouse_formats::gguf::{self, Array, GgmlType, GgufFile, TensorInfo, Value};
use inhouse_formats::gguf_write::{
    check_lora_against, random_lora_for, write_lora_adapter, GgufWriteError, GgufWriter, LoraPair,
};
use inhouse_formats::sign::{
    self, sha256_file, sign_model, signature_path, write_keypair, PublicKey, SecretKey,
    Sha256Writer, SignError, SignatureFile, TrustedKeys,
};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn read_range(path: &Path, f: &GgufFile, t: &TensorInfo) -> Vec<u8> {
    let (start, end) = f.tensor_data_range(t);
    let mut file = File::open(path).unwrap();
    file.seek(SeekFrom::Start(start)).unwrap();
    let mut buf = vec![0u8; (end - start) as usize];
    file.read_exact(&mut buf).unwrap();
    buf
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

// ---- signatures ----

#[test]
fn sha256_of_a_file_matches_the_streaming_hasher() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, b"abc").unwrap();
    assert_eq!(
        sha256_file(&path).unwrap(),
        (
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".to_string(),
            3
        )
    );

    // Bigger than the 64 KiB read buffer, and not a multiple of it.
    let data: Vec<u8> = (0..200_003u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let mut w = Sha256Writer::new();
    for chunk in data.chunks(7_777) {
        w.write_all(chunk).unwrap();
    }
    assert_eq!(sha256_file(&path).unwrap(), w.finish());

    let e = sha256_file(&dir.path().join("missing")).unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
}

#[test]
fn keypair_files_sign_and_verify_a_model() {
    let keys = tempfile::tempdir().unwrap();
    let (secret_path, public_path, public) =
        write_keypair(keys.path(), "acme-2025", "ACME release key").unwrap();
    assert_eq!(secret_path, keys.path().join("acme-2025.key"));
    assert_eq!(public_path, keys.path().join("acme-2025.pub"));
    assert_eq!(mode(&secret_path), 0o600);
    assert_eq!(mode(&public_path), 0o644);

    // File formats: one newline-terminated line each.
    let pub_text = std::fs::read_to_string(&public_path).unwrap();
    let fields: Vec<&str> = pub_text.trim_end_matches('\n').splitn(3, ' ').collect();
    assert_eq!(fields[0], "inhouse-ed25519");
    assert_eq!(fields[1].len(), 44, "base64 of 32 bytes");
    assert_eq!(fields[2], "ACME release key");
    assert!(pub_text.ends_with('\n') && pub_text.lines().count() == 1);
    let key_text = std::fs::read_to_string(&secret_path).unwrap();
    assert!(
        key_text.starts_with("inhouse-ed25519-secret "),
        "{key_text}"
    );
    assert!(key_text.ends_with('\n') && key_text.lines().count() == 1);
    assert_eq!(PublicKey::parse(&pub_text).unwrap(), public);
    assert_eq!(public.key_id().len(), 16);

    // Sign a "model" as the publisher CLI would.
    let work = tempfile::tempdir().unwrap();
    let model_path = work.path().join("tiny.gguf");
    std::fs::write(&model_path, b"not really a model, but bytes to sign").unwrap();
    let (digest, size) = sha256_file(&model_path).unwrap();
    let secret = SecretKey::read(&secret_path).unwrap();
    assert!(!format!("{secret:?}").contains(fields[1]));
    let sig = sign_model(&secret, &digest, size, Some("tiny"), None).unwrap();
    let sig_path = signature_path(&model_path);
    assert_eq!(sig_path, work.path().join("tiny.gguf.sig"));
    std::fs::write(&sig_path, sig.to_json()).unwrap();

    // The signature file's shape.
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&sig_path).unwrap()).unwrap();
    let obj = json.as_object().unwrap();
    let mut fields_present: Vec<&str> = obj.keys().map(String::as_str).collect();
    fields_present.sort_unstable();
    assert_eq!(
        fields_present,
        ["format", "key_id", "signature", "statement"]
    );
    assert_eq!(json["format"], "inhouse-model-signature/1");
    assert_eq!(json["key_id"], public.key_id().as_str());
    let statement: serde_json::Value =
        serde_json::from_str(json["statement"].as_str().unwrap()).unwrap();
    assert_eq!(statement["digest"], format!("sha256:{digest}").as_str());
    assert_eq!(statement["size"], size);
    assert_eq!(statement["name"], "tiny");
    assert!(statement["comment"].is_null());

    // The appliance side: only the .pub file is in its trusted directory.
    let trusted_dir = tempfile::tempdir().unwrap();
    std::fs::copy(&public_path, trusted_dir.path().join("acme.pub")).unwrap();
    std::fs::write(trusted_dir.path().join("README"), "not a key").unwrap();
    std::fs::write(trusted_dir.path().join("acme.pub.bak"), "not a key either").unwrap();
    let trusted = TrustedKeys::load_dir(trusted_dir.path()).unwrap();
    assert_eq!(trusted.len(), 1);
    assert_eq!(trusted.key_ids(), [public.key_id().as_str()]);

    let on_disk = SignatureFile::read(&sig_path).unwrap();
    let (digest_now, size_now) = sha256_file(&model_path).unwrap();
    let v = trusted.verify(&on_disk, &digest_now, size_now).unwrap();
    assert_eq!(v.key_id, public.key_id());
    assert_eq!(v.key_comment, "ACME release key");
    assert_eq!(v.name.as_deref(), Some("tiny"));

    // One flipped byte in the model: the signature is still genuine, for another file.
    let mut bytes = std::fs::read(&model_path).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&model_path, &bytes).unwrap();
    let (digest_bad, size_bad) = sha256_file(&model_path).unwrap();
    let e = trusted.verify(&on_disk, &digest_bad, size_bad).unwrap_err();
    assert!(matches!(e, SignError::DigestMismatch { .. }), "{e}");
}

#[test]
fn trusted_keys_directory_rules() {
    let dir = tempfile::tempdir().unwrap();
    // A missing directory is an empty set, not an error.
    let none = TrustedKeys::load_dir(&dir.path().join("absent")).unwrap();
    assert!(none.is_empty());
    assert!(none.key_ids().is_empty());

    let (_, pub_a, a) = write_keypair(dir.path(), "a", "key a").unwrap();
    let (_, _, b) = write_keypair(dir.path(), "b", "key b").unwrap();
    // The same key twice counts once; the .key files are ignored.
    std::fs::copy(&pub_a, dir.path().join("a-copy.pub")).unwrap();
    let set = TrustedKeys::load_dir(dir.path()).unwrap();
    assert_eq!(set.len(), 2);
    let mut ids = vec![a.key_id(), b.key_id()];
    ids.sort();
    assert_eq!(set.key_ids(), ids);
    assert_eq!(set.get(&a.key_id()).unwrap().comment(), "key a");

    // A world-writable key file would let anyone add trust.
    std::fs::set_permissions(&pub_a, std::fs::Permissions::from_mode(0o666)).unwrap();
    let e = TrustedKeys::load_dir(dir.path()).unwrap_err();
    assert!(matches!(e, SignError::TrustedKeyWritable { .. }), "{e}");
    assert!(e.to_string().contains("chmod o-w"), "{e}");
    std::fs::set_permissions(&pub_a, std::fs::Permissions::from_mode(0o644)).unwrap();

    // A malformed file names itself and the line.
    let bad = dir.path().join("zz-bad.pub");
    std::fs::write(&bad, "\ninhouse-ed25519\n").unwrap();
    let e = TrustedKeys::load_dir(dir.path()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("{} line 2: ", bad.display())),
        "{e}"
    );
}

#[test]
fn secret_key_file_checks() {
    let dir = tempfile::tempdir().unwrap();
    let (secret_path, _, _) = write_keypair(dir.path(), "k", "").unwrap();
    std::fs::set_permissions(&secret_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = SecretKey::read(&secret_path).unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("run `chmod 600 {}`", secret_path.display())),
        "{e}"
    );

    let garbage = dir.path().join("garbage.key");
    std::fs::write(&garbage, "inhouse-ed25519-secret AAAA\n").unwrap();
    std::fs::set_permissions(&garbage, std::fs::Permissions::from_mode(0o600)).unwrap();
    let e = SecretKey::read(&garbage).unwrap_err();
    assert!(matches!(e, SignError::SecretKeyFormat { .. }), "{e}");
    // The public key line is not a secret key.
    let (_, pub_path, _) = write_keypair(dir.path(), "p", "x").unwrap();
    std::fs::set_permissions(&pub_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(matches!(
        SecretKey::read(&pub_path),
        Err(SignError::SecretKeyFormat { .. })
    ));

    // Existing files are never replaced, and a failed attempt leaves nothing new behind.
    std::fs::write(dir.path().join("only-pub.pub"), "x").unwrap();
    let e = write_keypair(dir.path(), "only-pub", "x").unwrap_err();
    assert!(matches!(e, SignError::KeyExists { .. }), "{e}");
    assert!(!dir.path().join("only-pub.key").exists());
    assert!(matches!(
        sign::generate_key("two\nlines"),
        Err(SignError::InvalidComment)
    ));
}

// ---- GGUF writer ----

#[test]
fn written_gguf_reads_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.gguf");
    let t1: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
    let t2 = vec![f32::MIN_POSITIVE, -0.0, 1e30, f32::NAN];
    let kvs = vec![
        (
            "general.architecture".to_string(),
            Value::String("llama".into()),
        ),
        ("test.u32".into(), Value::U32(7)),
        ("test.f32".into(), Value::F32(0.25)),
        ("test.bool".into(), Value::Bool(true)),
        (
            "test.strings".into(),
            Value::Array(Array::String(vec!["a".into(), "".into(), "ünï".into()])),
        ),
        (
            "test.i32s".into(),
            Value::Array(Array::I32(vec![-1, 0, i32::MAX])),
        ),
        ("test.u8".into(), Value::U8(255)),
        ("test.i8".into(), Value::I8(-5)),
        ("test.u16".into(), Value::U16(65535)),
        ("test.i16".into(), Value::I16(-300)),
        ("test.u64".into(), Value::U64(u64::MAX)),
        ("test.i64".into(), Value::I64(i64::MIN)),
        ("test.f64".into(), Value::F64(-2.5e300)),
        (
            "test.nested".into(),
            Value::Array(Array::Array(vec![
                Array::U16(vec![1, 2]),
                Array::Bool(vec![true, false]),
                Array::F64(vec![]),
            ])),
        ),
    ];
    let mut w = GgufWriter::new();
    for (k, v) in &kvs {
        w.set(k, v.clone()).unwrap();
    }
    w.add_tensor_f32("blk.0.w", &[4, 3, 2], t1.clone()).unwrap();
    w.add_tensor_f32("blk.1.w", &[4], t2.clone()).unwrap();
    w.write_to(&path).unwrap();
    assert!(!dir.path().join("out.gguf.tmp").exists());

    let f = gguf::open(&path).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    // NaN != NaN, so compare the KVs (which hold no NaN) and the tensor bytes separately.
    assert_eq!(f.kvs(), kvs.as_slice());
    let infos: Vec<(&str, &[u64], GgmlType, u64, u64)> = f
        .tensors()
        .iter()
        .map(|t| {
            (
                t.name.as_str(),
                t.dims.as_slice(),
                t.ggml_type,
                t.offset,
                t.n_bytes,
            )
        })
        .collect();
    assert_eq!(
        infos,
        [
            ("blk.0.w", &[4u64, 3, 2][..], GgmlType::F32, 0, 96),
            ("blk.1.w", &[4u64][..], GgmlType::F32, 96, 16),
        ]
    );
    assert_eq!(read_range(&path, &f, &f.tensors()[0]), f32_bytes(&t1));
    assert_eq!(read_range(&path, &f, &f.tensors()[1]), f32_bytes(&t2));
    assert_eq!(f.file_size() % 32, 0, "the last tensor is padded too");
}

#[test]
fn writer_set_alignment_and_raw_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raw.gguf");
    let mut w = GgufWriter::new();
    w.set("a", Value::U32(1)).unwrap();
    w.set("b", Value::U32(2)).unwrap();
    w.set("a", Value::String("replaced".into())).unwrap();
    w.set("general.alignment", Value::U32(64)).unwrap();
    assert_eq!(w.alignment(), 64);
    // A Q4_0 tensor of 64 elements: 2 blocks of 18 bytes.
    let q = vec![0x11u8; 36];
    w.add_tensor_raw("q", &[64], GgmlType::Q4_0, q.clone())
        .unwrap();
    w.add_tensor_f32("f", &[2], vec![1.0, 2.0]).unwrap();
    w.write_to(&path).unwrap();
    let f = gguf::open(&path).unwrap();
    let keys: Vec<&str> = f.kvs().iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["a", "b", "general.alignment"]);
    assert_eq!(f.get_str("a"), Some("replaced"));
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_offset() % 64, 0);
    assert_eq!(f.tensors()[1].offset, 64);
    assert_eq!(read_range(&path, &f, &f.tensors()[0]), q);

    // Copy the metadata of the file into a new one; overwriting is atomic.
    let mut copy = GgufWriter::new();
    copy.copy_kvs_from(&f).unwrap();
    copy.add_tensor_f32("only", &[1], vec![9.0]).unwrap();
    copy.write_to(&path).unwrap();
    let g = gguf::open(&path).unwrap();
    assert_eq!(g.kvs(), f.kvs());
    assert_eq!(g.tensors().len(), 1);
}

#[test]
fn writer_refuses_what_the_reader_would() {
    let mut w = GgufWriter::new();
    w.add_tensor_f32("t", &[2, 2], vec![0.0; 4]).unwrap();
    let e = w.add_tensor_f32("t", &[1], vec![0.0]).unwrap_err();
    assert!(matches!(e, GgufWriteError::DuplicateTensor { .. }), "{e}");
    let e = w.add_tensor_f32("u", &[2, 3], vec![0.0; 5]).unwrap_err();
    assert!(
        matches!(
            e,
            GgufWriteError::DataLength {
                expected: 6,
                actual: 5,
                ..
            }
        ),
        "{e}"
    );
    assert!(matches!(
        w.add_tensor_f32("u", &[], vec![]),
        Err(GgufWriteError::BadShape { .. })
    ));
    assert!(matches!(
        w.add_tensor_f32("u", &[1, 0], vec![]),
        Err(GgufWriteError::BadShape { .. })
    ));
    assert!(matches!(
        w.add_tensor_f32("u", &[1, 1, 1, 1, 1], vec![0.0]),
        Err(GgufWriteError::BadShape { .. })
    ));
    assert!(matches!(
        w.add_tensor_f32(&"x".repeat(64), &[1], vec![0.0]),
        Err(GgufWriteError::BadTensorName { .. })
    ));
    assert!(matches!(
        w.add_tensor_raw("q", &[33], GgmlType::Q4_0, vec![0; 18]),
        Err(GgufWriteError::BadShape { .. })
    ));
    assert!(matches!(
        w.add_tensor_raw("q", &[32], GgmlType::Q4_0, vec![0; 17]),
        Err(GgufWriteError::DataLength { .. })
    ));
    assert!(matches!(
        w.set("general.alignment", Value::U32(48)),
        Err(GgufWriteError::BadAlignment { .. })
    ));
    assert!(matches!(
        w.set("general.alignment", Value::U64(64)),
        Err(GgufWriteError::BadAlignment { .. })
    ));
    assert!(matches!(
        w.set("", Value::U8(0)),
        Err(GgufWriteError::BadKey { .. })
    ));
    assert!(matches!(
        w.set("a\nb", Value::U8(0)),
        Err(GgufWriteError::BadKey { .. })
    ));

    // A value beyond the reader's caps: caught by the re-read, and nothing is left behind.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.gguf");
    w.set("general.name", Value::String("x".repeat((1 << 20) + 1)))
        .unwrap();
    let e = w.write_to(&path).unwrap_err();
    assert!(matches!(e, GgufWriteError::Invalid { .. }), "{e}");
    assert!(!path.exists() && !dir.path().join("big.gguf.tmp").exists());
}

// ---- LoRA adapters ----

fn pair(target: &str, n_in: u64, n_out: u64, r: u64) -> LoraPair {
    LoraPair {
        target: target.into(),
        a: (vec![n_in, r], vec![0.5; (n_in * r) as usize]),
        b: (vec![r, n_out], vec![-0.5; (r * n_out) as usize]),
    }
}

#[test]
fn lora_adapter_layout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adapter.gguf");
    let pairs = [
        pair("blk.0.attn_q.weight", 8, 6, 2),
        pair("blk.0.attn_v.weight", 8, 4, 2),
    ];
    write_lora_adapter(&path, "llama", 16.0, &pairs).unwrap();
    let f = gguf::open(&path).unwrap();
    assert_eq!(f.architecture(), Some("llama"));
    assert_eq!(f.get_str("general.type"), Some("adapter"));
    assert_eq!(f.get_str("adapter.type"), Some("lora"));
    assert_eq!(f.get("adapter.lora.alpha"), Some(&Value::F32(16.0)));
    let names: Vec<(&str, &[u64])> = f
        .tensors()
        .iter()
        .map(|t| (t.name.as_str(), t.dims.as_slice()))
        .collect();
    assert_eq!(
        names,
        [
            ("blk.0.attn_q.weight.lora_a", &[8u64, 2][..]),
            ("blk.0.attn_q.weight.lora_b", &[2u64, 6][..]),
            ("blk.0.attn_v.weight.lora_a", &[8u64, 2][..]),
            ("blk.0.attn_v.weight.lora_b", &[2u64, 4][..]),
        ]
    );
    assert!(f.tensors().iter().all(|t| t.ggml_type == GgmlType::F32));
    assert_eq!(
        read_range(&path, &f, &f.tensors()[1]),
        f32_bytes(&[-0.5; 12])
    );

    // Ranks that disagree, shapes that are not 2-D, names llama.cpp would mangle, no pairs.
    let mut bad = pair("blk.0.attn_q.weight", 8, 6, 2);
    bad.b.0 = vec![3, 4];
    bad.b.1 = vec![0.0; 12];
    let e = write_lora_adapter(&path, "llama", 1.0, &[bad]).unwrap_err();
    assert!(
        e.to_string().contains("lora_a ne1 must equal lora_b ne0"),
        "{e}"
    );
    let mut flat = pair("blk.0.attn_q.weight", 8, 6, 2);
    flat.a = (vec![16], vec![0.0; 16]);
    assert!(matches!(
        write_lora_adapter(&path, "llama", 1.0, &[flat]),
        Err(GgufWriteError::BadLora { .. })
    ));
    assert!(matches!(
        write_lora_adapter(&path, "llama", 1.0, &[pair("x.lora_a", 1, 1, 1)]),
        Err(GgufWriteError::BadLora { .. })
    ));
    assert!(matches!(
        write_lora_adapter(&path, "llama", f32::NAN, &pairs),
        Err(GgufWriteError::BadLora { .. })
    ));
    assert!(matches!(
        write_lora_adapter(&path, "llama", 1.0, &[]),
        Err(GgufWriteError::EmptyLora)
    ));
    // The failed writes left the earlier adapter in place.
    assert_eq!(gguf::open(&path).unwrap().tensors().len(), 4);
}

#[test]
fn random_lora_for_smollm2() {
    let base_path = model(SMOLLM2);
    let base = gguf::open(&base_path).unwrap();
    let rank = 4;
    let pairs = random_lora_for(&base, &["attn_q.weight", "attn_v.weight"], rank, 0.01, 7);
    let n_layers = base.get_u64("llama.block_count").unwrap();
    assert_eq!(pairs.len() as u64, 2 * n_layers);
    check_lora_against(&base, &pairs).unwrap();
    // Deterministic for a seed, different across seeds.
    let again = random_lora_for(&base, &["attn_q.weight", "attn_v.weight"], rank, 0.01, 7);
    assert_eq!(again, pairs);
    let other = random_lora_for(&base, &["attn_q.weight"], rank, 0.01, 8);
    assert_ne!(other[0].a.1, pairs[0].a.1);
    assert!(pairs
        .iter()
        .flat_map(|p| p.a.1.iter().chain(&p.b.1))
        .all(|x| x.abs() <= 0.01));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("smollm2-lora.gguf");
    write_lora_adapter(&path, base.architecture().unwrap(), 8.0, &pairs).unwrap();
    let f = gguf::open(&path).unwrap();
    assert_eq!(f.architecture(), Some("llama"));
    assert_eq!(f.get_str("general.type"), Some("adapter"));
    assert_eq!(f.get_str("adapter.type"), Some("lora"));
    assert_eq!(f.get("adapter.lora.alpha"), Some(&Value::F32(8.0)));
    assert_eq!(f.tensors().len(), 4 * n_layers as usize);
    for p in &pairs {
        let base_t = base.tensors().iter().find(|t| t.name == p.target).unwrap();
        let (n_in, n_out) = (base_t.dims[0], base_t.dims[1]);
        let a = f
            .tensors()
            .iter()
            .find(|t| t.name == format!("{}.lora_a", p.target))
            .unwrap();
        let b = f
            .tensors()
            .iter()
            .find(|t| t.name == format!("{}.lora_b", p.target))
            .unwrap();
        assert_eq!(a.dims, [n_in, rank], "{}", a.name);
        assert_eq!(b.dims, [rank, n_out], "{}", b.name);
        assert_eq!(read_range(&path, &f, a), f32_bytes(&p.a.1));
        assert_eq!(read_range(&path, &f, b), f32_bytes(&p.b.1));
    }
    // The packing llama.cpp's loader insists on: offsets in order, each padded to the alignment.
    let mut expected = 0;
    for t in f.tensors() {
        assert_eq!(t.offset, expected, "{}", t.name);
        expected = (t.offset + t.n_bytes).div_ceil(f.alignment()) * f.alignment();
    }

    // The same adapter does not fit a base whose shapes differ (a "wrong base model").
    let mut wrong = pairs[0].clone();
    wrong.a.0 = vec![wrong.a.0[0] + 32, rank];
    wrong.a.1 = vec![0.0; (wrong.a.0[0] * rank) as usize];
    let e = check_lora_against(&base, &[wrong]).unwrap_err();
    assert!(e.to_string().contains("do not fit the base shape"), "{e}");
    let missing = pair("blk.999.attn_q.weight", 8, 8, 1);
    assert!(check_lora_against(&base, &[missing]).is_err());

    // The token embedding takes llama.cpp's flipped shapes.
    let embd = random_lora_for(&base, &["token_embd.weight"], 2, 0.01, 1);
    assert_eq!(embd.len(), 1);
    let t = base
        .tensors()
        .iter()
        .find(|t| t.name == "token_embd.weight")
        .unwrap();
    assert_eq!(embd[0].a.0, [2, t.dims[1]]);
    assert_eq!(embd[0].b.0, [2, t.dims[0]]);
    check_lora_against(&base, &embd).unwrap();
}
