//! The `.cu` sources (embedded with `include_str!`) and their run-time
//! compilation with NVRTC to a cubin for one GPU architecture.
//!
//! Every source is compiled after `kernels/cuda/storage.cuh` (the `floatX`
//! storage type); those that use it are compiled once per [`Dtype`].
//!
//! Cubins (machine code), not PTX, are built: they load on any driver that
//! supports the architecture, whereas PTX from an NVRTC newer than the driver
//! is refused by the driver's JIT.

use std::ffi::{CStr, CString, c_char};

use cudarc::nvrtc::{result, sys};

use super::CudaError;
use super::storage::Dtype;

/// `storage.cuh`, compiled ahead of every source: `floatX`, `to_f32`, `to_x`.
pub const STORAGE_HEADER: &str = include_str!("../../cuda/storage.cuh");

/// One `.cu` file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KernelSource {
    /// The file name under `kernels/cuda/`.
    pub name: &'static str,
    /// Its text.
    pub code: &'static str,
    /// Whether it needs `-DHS=<head size>` (the attention kernels).
    pub needs_head_size: bool,
    /// Whether its kernels store values as `floatX`, so that it is compiled once
    /// per [`Dtype`] (all but the fp32-only gradient norm).
    pub per_dtype: bool,
}

impl KernelSource {
    /// The storage types this source is compiled for.
    pub fn dtypes(&self) -> &'static [Dtype] {
        if self.per_dtype {
            &Dtype::ALL
        } else {
            &[Dtype::F32]
        }
    }
}

macro_rules! source {
    ($name:literal, $hs:literal, $per_dtype:literal) => {
        KernelSource {
            name: $name,
            code: include_str!(concat!("../../cuda/", $name)),
            needs_head_size: $hs,
            per_dtype: $per_dtype,
        }
    };
}

/// `adamw.cu`.
pub const ADAMW: KernelSource = source!("adamw.cu", false, true);
/// `attention.cu` (needs a head size).
pub const ATTENTION: KernelSource = source!("attention.cu", true, true);
/// `attention_gemm.cu`.
pub const ATTENTION_GEMM: KernelSource = source!("attention_gemm.cu", false, true);
/// `crossentropy.cu`.
pub const CROSSENTROPY: KernelSource = source!("crossentropy.cu", false, true);
/// `elementwise.cu`.
pub const ELEMENTWISE: KernelSource = source!("elementwise.cu", false, true);
/// `embedding.cu`.
pub const EMBEDDING: KernelSource = source!("embedding.cu", false, true);
/// `gelu.cu`.
pub const GELU: KernelSource = source!("gelu.cu", false, true);
/// `layernorm.cu`.
pub const LAYERNORM: KernelSource = source!("layernorm.cu", false, true);
/// `matmul.cu`.
pub const MATMUL: KernelSource = source!("matmul.cu", false, true);
/// `norm.cu`.
pub const NORM: KernelSource = source!("norm.cu", false, false);
/// `reduce.cu`.
pub const REDUCE: KernelSource = source!("reduce.cu", false, true);

/// Every kernel source, for checks that compile them all.
pub const SOURCES: [KernelSource; 11] = [
    ADAMW,
    ATTENTION,
    ATTENTION_GEMM,
    CROSSENTROPY,
    ELEMENTWISE,
    EMBEDDING,
    GELU,
    LAYERNORM,
    MATMUL,
    NORM,
    REDUCE,
];

/// Whether the NVRTC library can be loaded (checked before any NVRTC call,
/// which would panic without it).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { sys::is_culib_present() }
}

/// NVRTC's version as (major, minor).
pub fn nvrtc_version() -> Result<(i32, i32), CudaError> {
    if !nvrtc_available() {
        return Err(CudaError::LibraryMissing { library: "nvrtc" });
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present; both pointers are valid for writes.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }.result()?;
    Ok((major, minor))
}

/// Compiles `source` to a cubin for `arch` (e.g. `sm_90`), with `head_size`
/// as `-DHS` for sources that need it and `floatX` = `dtype` (ignored by the
/// sources that are not [`KernelSource::per_dtype`]).
pub fn compile_cubin(
    source: &KernelSource,
    arch: &str,
    head_size: Option<usize>,
    dtype: Dtype,
) -> Result<Vec<u8>, CudaError> {
    if !nvrtc_available() {
        return Err(CudaError::LibraryMissing { library: "nvrtc" });
    }
    let mut options = vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()];
    match (source.needs_head_size, head_size) {
        (true, Some(hs)) => options.push(format!("-DHS={hs}")),
        (true, None) => {
            return Err(CudaError::Unsupported {
                kernel: source.name,
                reason: "needs a head size".into(),
            });
        }
        (false, _) => {}
    }
    if let Some(define) = dtype.define().filter(|_| source.per_dtype) {
        options.push(define.into());
    }
    // `#line` keeps NVRTC's line numbers those of the `.cu` file.
    let code = format!(
        "{STORAGE_HEADER}\n#line 1 \"{}\"\n{}",
        source.name, source.code
    );
    let code = CString::new(code).expect("kernel sources hold no NUL byte");
    let name = CString::new(source.name).expect("kernel names hold no NUL byte");
    let program = Program(result::create_program(&code, Some(&name))?);
    // SAFETY: `program` is a live program; the options are valid strings.
    let compiled = unsafe { result::compile_program(program.0, &options) };
    if compiled.is_err() {
        // SAFETY: as above.
        let log = unsafe { result::get_program_log(program.0) }?;
        // SAFETY: NVRTC's log is NUL-terminated.
        let log = unsafe { CStr::from_ptr(log.as_ptr()) };
        return Err(CudaError::Compile {
            source_name: source.name,
            arch: arch.to_string(),
            options: options.join(" "),
            log: log.to_string_lossy().into_owned(),
        });
    }
    let mut size = 0usize;
    // SAFETY: the program compiled; `size` is valid for writes.
    unsafe { sys::nvrtcGetCUBINSize(program.0, &mut size) }.result()?;
    let mut cubin = vec![0u8; size];
    // SAFETY: `cubin` holds the `size` bytes NVRTC writes.
    unsafe { sys::nvrtcGetCUBIN(program.0, cubin.as_mut_ptr() as *mut c_char) }.result()?;
    Ok(cubin)
}

/// An NVRTC program, destroyed on drop.
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: created by `create_program` and destroyed only here. A failure
        // to free is not actionable.
        let _ = unsafe { result::destroy_program(self.0) };
    }
}
