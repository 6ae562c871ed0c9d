//! `aws-chunked` bodies signed chunk by chunk (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD`), as S3
//! uploads send them: each chunk's signature chains from the previous one, starting at the
//! request's own. The broker checks every chunk against the agent's chain and re-signs it
//! on the real key's chain; chunk sizes stay the same, so the body's length does too.

use axum::body::{Body, BodyDataStream};
use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};

use super::{Scope, SigningKey, decode_signature, same_signature, sha256_hex};
use crate::tokens::hex;

/// Largest chunk accepted; SDKs send 64 KiB to 8 MiB.
pub const MAX_CHUNK: usize = 16 << 20;
/// Longest chunk header line: `<hex size>;chunk-signature=<64 hex>`.
const MAX_HEADER: usize = 128;
const SIGNATURE_FIELD: &str = ";chunk-signature=";

/// A chunked body could not be passed on.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// Reading the agent's body failed.
    #[error("reading the request body failed: {0}")]
    Body(#[from] axum::Error),
    /// A chunk's signature does not continue the agent's chain.
    #[error("a chunk signature of the aws-chunked body does not match")]
    Signature,
    /// The body is not well-formed `aws-chunked`.
    #[error("the aws-chunked body is malformed: {0}")]
    Malformed(&'static str),
}

/// One side's chain of chunk signatures.
pub struct ChunkChain {
    key: SigningKey,
    amz_date: String,
    scope: Scope,
    previous: [u8; 32],
}

impl ChunkChain {
    /// A chain that starts at the request's seed signature.
    pub fn new(key: SigningKey, amz_date: &str, scope: Scope, seed: [u8; 32]) -> Self {
        ChunkChain {
            key,
            amz_date: amz_date.to_owned(),
            scope,
            previous: seed,
        }
    }

    /// The signature of the next chunk, which becomes the one the chunk after chains from.
    pub fn sign_next(&mut self, data: &[u8]) -> [u8; 32] {
        let to_sign = format!(
            "AWS4-HMAC-SHA256-PAYLOAD\n{}\n{}\n{}\n{}\n{}",
            self.amz_date,
            self.scope,
            hex(&self.previous),
            sha256_hex(b""),
            sha256_hex(data)
        );
        self.previous = self.key.sign(&to_sign);
        self.previous
    }
}

/// `body` with every chunk checked against `agent` and re-signed on `upstream`; its chunks'
/// data must come to `decoded_length` bytes, as the signed `x-amz-decoded-content-length`
/// says.
pub fn resign(
    body: Body,
    agent: ChunkChain,
    upstream: ChunkChain,
    decoded_length: u64,
) -> impl Stream<Item = Result<Bytes, ChunkError>> + Send {
    let state = Resigner {
        input: body.into_data_stream(),
        buffer: BytesMut::new(),
        agent,
        upstream,
        remaining: decoded_length,
        done: false,
    };
    futures_util::stream::try_unfold(state, |mut state| async move {
        match state.next_chunk().await? {
            Some(out) => Ok(Some((out, state))),
            None => Ok(None),
        }
    })
}

struct Resigner {
    input: BodyDataStream,
    buffer: BytesMut,
    agent: ChunkChain,
    upstream: ChunkChain,
    /// Data bytes the declared decoded length leaves for the chunks still to come.
    remaining: u64,
    done: bool,
}

impl Resigner {
    /// The next re-signed chunk, `None` after the final (empty) one.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, ChunkError> {
        if self.done {
            return match self.input.next().await {
                Some(Ok(extra)) if !extra.is_empty() => {
                    Err(ChunkError::Malformed("data after the final chunk"))
                }
                Some(Err(e)) => Err(e.into()),
                _ => Ok(None),
            };
        }
        let ChunkHeader {
            len: header_len,
            digits,
            size,
            claimed,
        } = loop {
            if let Some(header) = parse_header(&self.buffer)? {
                break header;
            }
            self.fill().await?;
        };
        // Checked before the chunk goes on, so a body at odds with the length the agent signed
        // never reaches the upstream whole under the real key's signatures.
        self.remaining = self
            .remaining
            .checked_sub(size as u64)
            .filter(|&left| size != 0 || left == 0)
            .ok_or(ChunkError::Malformed(
                "the chunks' data is not as long as x-amz-decoded-content-length says",
            ))?;
        let total = header_len + size + 2;
        while self.buffer.len() < total {
            self.fill().await?;
        }
        // The size goes on as the agent spelled it (`00a`, `A`): the body keeps the length
        // its Content-Length gives.
        let spelled_size = self.buffer.split_to(digits).freeze();
        self.buffer.advance(header_len - digits);
        let data = self.buffer.split_to(size).freeze();
        if &self.buffer[..2] != b"\r\n" {
            return Err(ChunkError::Malformed("a chunk does not end with CRLF"));
        }
        self.buffer.advance(2);
        if !same_signature(&self.agent.sign_next(&data), &claimed) {
            return Err(ChunkError::Signature);
        }
        let signature = self.upstream.sign_next(&data);
        let mut out = BytesMut::with_capacity(total);
        out.extend_from_slice(&spelled_size);
        out.extend_from_slice(format!("{SIGNATURE_FIELD}{}\r\n", hex(&signature)).as_bytes());
        out.extend_from_slice(&data);
        out.extend_from_slice(b"\r\n");
        if size == 0 {
            self.done = true;
            if !self.buffer.is_empty() {
                return Err(ChunkError::Malformed("data after the final chunk"));
            }
        }
        Ok(Some(out.freeze()))
    }

    async fn fill(&mut self) -> Result<(), ChunkError> {
        match self.input.next().await {
            Some(data) => {
                self.buffer.extend_from_slice(&data?);
                Ok(())
            }
            None => Err(ChunkError::Malformed("the body ends inside a chunk")),
        }
    }
}

/// A chunk's header line.
struct ChunkHeader {
    /// Length of the line with its CRLF.
    len: usize,
    /// Length of the size's hex digits, which start the line.
    digits: usize,
    /// Data bytes in the chunk.
    size: usize,
    /// The chunk signature the agent claims.
    claimed: [u8; 32],
}

/// The next chunk's header, once it is all buffered.
fn parse_header(buffer: &[u8]) -> Result<Option<ChunkHeader>, ChunkError> {
    let Some(end) = memchr::memmem::find(buffer, b"\r\n") else {
        return if buffer.len() > MAX_HEADER {
            Err(ChunkError::Malformed("a chunk header is too long"))
        } else {
            Ok(None)
        };
    };
    let line = std::str::from_utf8(&buffer[..end])
        .map_err(|_| ChunkError::Malformed("a chunk header is not text"))?;
    let (size, signature) = line
        .split_once(SIGNATURE_FIELD)
        .ok_or(ChunkError::Malformed("a chunk has no chunk-signature"))?;
    let digits = size.len();
    // `from_str_radix` takes a leading `+` too, which is not hex.
    let size = Some(size)
        .filter(|s| s.bytes().all(|b| b.is_ascii_hexdigit()))
        .and_then(|s| usize::from_str_radix(s, 16).ok())
        .filter(|&s| s <= MAX_CHUNK)
        .ok_or(ChunkError::Malformed(
            "a chunk size is not hex or over 16 MiB",
        ))?;
    let claimed =
        decode_signature(signature).map_err(|_| ChunkError::Malformed("bad chunk signature"))?;
    Ok(Some(ChunkHeader {
        len: end + 2,
        digits,
        size,
        claimed,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{example_scope, example_secret};
    use super::*;
    use http::{HeaderMap, HeaderValue};

    const SEED: &str = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9";
    const DATE: &str = "20130524T000000Z";

    /// AWS's documented streaming upload: 66,560 bytes of `a` in chunks of 64 KiB.
    fn example_body(signatures: &[String]) -> Vec<u8> {
        let mut body = Vec::new();
        for (size, sig) in [65536usize, 1024, 0].iter().zip(signatures) {
            body.extend_from_slice(format!("{size:x};chunk-signature={sig}\r\n").as_bytes());
            body.extend(std::iter::repeat_n(b'a', *size));
            body.extend_from_slice(b"\r\n");
        }
        body
    }

    fn documented_signatures() -> Vec<String> {
        [
            "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
            "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
            "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    fn chain(secret: &str, seed: [u8; 32]) -> ChunkChain {
        let key = SigningKey::new(&secret.to_owned().into(), &example_scope());
        ChunkChain::new(key, DATE, example_scope(), seed)
    }

    #[test]
    fn seed_signature_matches_aws_documented_example() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("content-encoding", "aws-chunked"),
            ("content-length", "66824"),
            ("host", "s3.amazonaws.com"),
            ("x-amz-content-sha256", super::super::STREAMING_PAYLOAD),
            ("x-amz-date", DATE),
            ("x-amz-decoded-content-length", "66560"),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        let signed: Vec<String> = headers.keys().map(|k| k.as_str().to_owned()).collect();
        let mut signed = signed;
        signed.sort();
        let parts = super::super::RequestParts {
            method: "PUT",
            path: "/examplebucket/chunkObject.txt",
            query: None,
            headers: &headers,
            payload_hash: super::super::STREAMING_PAYLOAD,
        };
        let canonical = parts.canonical(&signed, "s3").unwrap();
        let sts = super::super::string_to_sign(DATE, &example_scope(), &canonical);
        let seed = SigningKey::new(&example_secret(), &example_scope()).sign(&sts);
        assert_eq!(hex(&seed), SEED);
    }

    /// Data bytes in [`example_body`].
    const DECODED: u64 = 66_560;

    async fn run(
        body: Vec<u8>,
        agent: ChunkChain,
        upstream: ChunkChain,
    ) -> Result<Vec<u8>, ChunkError> {
        run_declaring(body, agent, upstream, DECODED).await
    }

    async fn run_declaring(
        body: Vec<u8>,
        agent: ChunkChain,
        upstream: ChunkChain,
        decoded_length: u64,
    ) -> Result<Vec<u8>, ChunkError> {
        // Split awkwardly, so headers and data straddle frames.
        let pieces: Vec<Result<Bytes, std::io::Error>> = body
            .chunks(7000)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let input = Body::from_stream(futures_util::stream::iter(pieces));
        let out: Vec<Bytes> = resign(input, agent, upstream, decoded_length)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        Ok(out.concat())
    }

    #[tokio::test]
    async fn chunks_are_checked_on_one_chain_and_resigned_on_another() {
        let seed = decode_signature(SEED).unwrap();
        let agent = chain("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", seed);
        // Re-signing with the same key and seed must reproduce AWS's signatures exactly.
        let same = chain("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", seed);
        let body = example_body(&documented_signatures());
        assert_eq!(run(body.clone(), agent, same).await.unwrap(), body);

        let agent = chain("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", seed);
        let other_seed = [7u8; 32];
        let real = chain("the-real-secret-access-key", other_seed);
        let out = run(body.clone(), agent, real).await.unwrap();
        assert_eq!(out.len(), body.len());
        let mut check = chain("the-real-secret-access-key", other_seed);
        let expected: Vec<String> = [65536usize, 1024, 0]
            .iter()
            .map(|&n| hex(&check.sign_next(&vec![b'a'; n])))
            .collect();
        assert_eq!(out, example_body(&expected));
    }

    #[tokio::test]
    async fn chunk_sizes_keep_their_spelling_so_the_body_keeps_its_length() {
        let seed = decode_signature(SEED).unwrap();
        let key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        let mut signing = chain(key, seed);
        let mut body = Vec::new();
        for (size, data) in [("000A", &b"0123456789"[..]), ("00", b"")] {
            let signature = hex(&signing.sign_next(data));
            body.extend_from_slice(format!("{size};chunk-signature={signature}\r\n").as_bytes());
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        // Re-signed on the same chain, the body comes out byte for byte as it went in: the
        // Content-Length it was sent with still holds.
        let out = run_declaring(body.clone(), chain(key, seed), chain(key, seed), 10).await;
        assert_eq!(out.unwrap(), body);

        let plus = format!("+0;chunk-signature={}\r\n\r\n", "0".repeat(64));
        let plus = run_declaring(plus.into_bytes(), chain(key, seed), chain(key, seed), 0).await;
        assert!(matches!(plus, Err(ChunkError::Malformed(_))));
    }

    #[tokio::test]
    async fn a_forged_chunk_or_broken_framing_is_refused() {
        let seed = decode_signature(SEED).unwrap();
        let key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        let mut signatures = documented_signatures();
        signatures[1] = "00".repeat(32);
        let forged = run(
            example_body(&signatures),
            chain(key, seed),
            chain(key, seed),
        )
        .await;
        assert!(matches!(forged, Err(ChunkError::Signature)));

        let mut cut = example_body(&documented_signatures());
        cut.truncate(60_000);
        let cut = run(cut, chain(key, seed), chain(key, seed)).await;
        assert!(matches!(cut, Err(ChunkError::Malformed(_))));

        let mut extra = example_body(&documented_signatures());
        extra.extend_from_slice(b"more");
        let extra = run(extra, chain(key, seed), chain(key, seed)).await;
        assert!(matches!(extra, Err(ChunkError::Malformed(_))));

        for declared in [DECODED - 1, DECODED + 1] {
            let body = example_body(&documented_signatures());
            let lying = run_declaring(body, chain(key, seed), chain(key, seed), declared).await;
            assert!(matches!(lying, Err(ChunkError::Malformed(_))), "{declared}");
        }

        let huge = format!("{:x};chunk-signature={}\r\n", MAX_CHUNK + 1, "0".repeat(64));
        let huge = run(huge.into_bytes(), chain(key, seed), chain(key, seed)).await;
        assert!(matches!(huge, Err(ChunkError::Malformed(_))));
    }
}
