//! One token stream of a prepared folder as it is written: the ids (and their SHA-256),
//! where each document starts, and, for chat data, the loss mask beside them.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use sha2::{Digest, Sha256};

use super::prepared::{StreamRecord, TokenDtype};

/// One token stream being written: ids, document starts, the hash of the ids, and (chat
/// data) the loss mask.
pub(super) struct StreamWriter {
    path: PathBuf,
    tokens_file: BufWriter<std::fs::File>,
    index_file: BufWriter<std::fs::File>,
    mask_file: Option<BufWriter<std::fs::File>>,
    counted: u64,
    hasher: Sha256,
    dtype: TokenDtype,
    pub(super) tokens: u64,
    documents: u64,
    in_document: bool,
    bytes: Vec<u8>,
}

impl StreamWriter {
    pub(super) fn create(dir: &Path, tokens: &str, index: &str, mask: Option<&str>, dtype: TokenDtype) -> Result<Self> {
        let open = |name: &str| -> Result<BufWriter<std::fs::File>> {
            let path = dir.join(name);
            Ok(BufWriter::with_capacity(1 << 20, std::fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?))
        };
        Ok(Self {
            path: dir.join(tokens),
            tokens_file: open(tokens)?,
            index_file: open(index)?,
            mask_file: mask.map(open).transpose()?,
            counted: 0,
            hasher: Sha256::new(),
            dtype,
            tokens: 0,
            documents: 0,
            in_document: false,
            bytes: Vec::new(),
        })
    }

    pub(super) fn push(&mut self, ids: &[u32]) -> Result<()> {
        if !self.in_document {
            self.index_file.write_all(&self.tokens.to_le_bytes())?;
            self.documents += 1;
            self.in_document = true;
        }
        self.bytes.clear();
        match self.dtype {
            TokenDtype::U16 => ids.iter().for_each(|&id| self.bytes.extend_from_slice(&(id as u16).to_le_bytes())),
            TokenDtype::U32 => ids.iter().for_each(|&id| self.bytes.extend_from_slice(&id.to_le_bytes())),
        }
        self.hasher.update(&self.bytes);
        self.tokens_file.write_all(&self.bytes).with_context(|| format!("cannot write {}", self.path.display()))?;
        self.tokens += ids.len() as u64;
        Ok(())
    }

    /// The mask bytes of the ids just pushed.
    pub(super) fn push_mask(&mut self, mask: &[u8]) -> Result<()> {
        let file = self.mask_file.as_mut().ok_or_else(|| anyhow!("a mask for a stream without one"))?;
        file.write_all(mask).with_context(|| format!("cannot write the mask beside {}", self.path.display()))?;
        self.counted += mask.iter().map(|&m| m as u64).sum::<u64>();
        Ok(())
    }

    pub(super) fn end_document(&mut self) {
        self.in_document = false;
    }

    pub(super) fn finish(mut self) -> Result<StreamRecord> {
        for file in [Some(&mut self.tokens_file), Some(&mut self.index_file), self.mask_file.as_mut()].into_iter().flatten() {
            file.flush().with_context(|| format!("cannot write {}", self.path.display()))?;
            file.get_ref().sync_all()?;
        }
        let counted = self.mask_file.is_some().then_some(self.counted);
        Ok(StreamRecord { tokens: self.tokens, documents: self.documents, sha256: format!("{:x}", self.hasher.finalize()), counted })
    }
}
