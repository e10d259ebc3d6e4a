//! The thin layer over wgpu, in the style of wgpu's `repeated_compute` example: one context
//! (device, queue, pipeline cache), buffers reused across calls, one staging buffer for
//! read-back, `pollster` to block.
//!
//! **Batching.** Dispatches (and buffer clears and copies) are recorded into one pending command
//! encoder, which is submitted at exactly three points: when the caller marks the end of an
//! iteration ([`saddle_tensor::Backend::step_end`], called after every PGD step and every
//! training step), when the host needs data back (`to_vec`, whose copy closes the submission),
//! and, as a safety cap only, when [`MAX_RECORDED`] commands are pending. So one PGD step is one
//! submission, never cut at an arbitrary op: a PGD-k attack makes k per restart plus a few that
//! do not depend on k (its read-backs). Nothing waits for the device at a submission, so a whole
//! PGD attack runs without a round trip. At most [`MAX_IN_FLIGHT`] submissions are outstanding
//! (the host waits for the oldest beyond that), which bounds how far the host runs ahead. Each
//! submission counts itself ([`TransferCounts::submissions`]).
//!
//! The cap exists for code that never calls `step_end` and never reads back (a loop of ops):
//! without it the pending encoder would grow without bound, holding its commands and bind groups
//! in host memory and every buffer freed meanwhile (parked, see below) on the device, and the
//! device would sit idle until the end. It is far above one step of the models trained here (a
//! CIFAR-10 wide ResNet step records a few hundred commands), so it never cuts a step of code
//! that calls the hook. The price of a step per submission: buffers freed during a step are
//! reused from the next step on, not within it, so a step's temporaries are all live at once.
//!
//! **Buffer reuse.** Buffers come from a pool bucketed by size class. A buffer freed while the
//! pending encoder may still read it is parked until that encoder is submitted; only then can it
//! be handed out again. Queue writes (`from_vec`, kernel parameters) land before the commands of
//! the next submission, so a reused buffer is never overwritten before an earlier command read
//! it: every command that used its old contents was in an earlier submission.
//!
//! **Errors.** wgpu reports validation errors, out-of-memory and device loss through callbacks;
//! they are stored here instead of panicking and returned as [`TensorError::Backend`] by the
//! next operation. Kernels that check their inputs on the device (labels) set bits of a status
//! word, read back with every `to_vec`.
//!
//! **Transfers.** Every host → device write goes through [`Context::upload`] (tensor data) or
//! [`Context::uniform`] (kernel parameters), every device → host copy through
//! [`Context::read_back`]; each counts itself ([`TransferCounts`]). Kernel parameters are kept
//! in a cache keyed by their bytes, written once and never modified, so a loop that repeats the
//! same ops on the same shapes (a PGD attack) writes no parameters after its first iteration.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use saddle_tensor::{Result, TensorError};

use crate::kernels::Kernel;

/// Commands (dispatches, clears, copies) recorded before the pending encoder is submitted
/// without waiting for `step_end` or a read-back: a safety cap, see the module docs.
pub(crate) const MAX_RECORDED: usize = 4096;
/// Submissions allowed in flight before the host waits for the oldest.
pub(crate) const MAX_IN_FLIGHT: usize = 3;
/// Idle bytes the pool keeps for reuse; beyond this, freed buffers are released.
const POOL_CAP_BYTES: u64 = 512 << 20;
/// Distinct kernel-parameter blocks kept on the device; when full the cache starts afresh.
const UNIFORM_CACHE_MAX: usize = 4096;

/// Host ↔ device transfers of one [`crate::Wgpu`] device since it was opened, counted where they
/// happen: the one write of tensor data, the one write of kernel parameters and the one copy back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TransferCounts {
    /// Tensors written from the host (`from_vec`).
    pub uploads: u64,
    /// Their bytes.
    pub upload_bytes: u64,
    /// Kernel-parameter blocks written (a cache miss; repeated parameters are not rewritten).
    pub param_uploads: u64,
    /// Their bytes.
    pub param_bytes: u64,
    /// Copies to the host, each a wait for the device (`to_vec`, `to_vec_into`).
    pub readbacks: u64,
    /// Their bytes (the status word included).
    pub readback_bytes: u64,
    /// Command buffers submitted to the queue: one at each `step_end` and each read-back, and
    /// one whenever a safety cap of 4096 pending commands is reached (not a transfer, but
    /// counted with them).
    pub submissions: u64,
}

impl TransferCounts {
    /// The transfers since `earlier` (a count taken before), field by field (0 where `earlier`
    /// is the later count).
    pub fn since(&self, earlier: &TransferCounts) -> TransferCounts {
        TransferCounts {
            uploads: self.uploads.saturating_sub(earlier.uploads),
            upload_bytes: self.upload_bytes.saturating_sub(earlier.upload_bytes),
            param_uploads: self.param_uploads.saturating_sub(earlier.param_uploads),
            param_bytes: self.param_bytes.saturating_sub(earlier.param_bytes),
            readbacks: self.readbacks.saturating_sub(earlier.readbacks),
            readback_bytes: self.readback_bytes.saturating_sub(earlier.readback_bytes),
            submissions: self.submissions.saturating_sub(earlier.submissions),
        }
    }
}

#[derive(Default)]
struct Counters {
    uploads: AtomicU64,
    upload_bytes: AtomicU64,
    param_uploads: AtomicU64,
    param_bytes: AtomicU64,
    readbacks: AtomicU64,
    readback_bytes: AtomicU64,
    submissions: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, v: u64) {
        counter.fetch_add(v, Ordering::Relaxed);
    }

    fn snapshot(&self) -> TransferCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TransferCounts {
            uploads: get(&self.uploads),
            upload_bytes: get(&self.upload_bytes),
            param_uploads: get(&self.param_uploads),
            param_bytes: get(&self.param_bytes),
            readbacks: get(&self.readbacks),
            readback_bytes: get(&self.readback_bytes),
            submissions: get(&self.submissions),
        }
    }
}
/// Threads of the 1-D kernels (`@workgroup_size(256)`).
pub(crate) const WG: u32 = 256;

/// Locks a mutex, turning poisoning (a panic elsewhere while holding it) into an error.
pub(crate) fn lock<'a, T>(m: &'a Mutex<T>, what: &str) -> Result<MutexGuard<'a, T>> {
    m.lock().map_err(|_| TensorError::Backend {
        backend: "wgpu".into(),
        detail: format!("internal lock ({what}) poisoned by an earlier panic"),
    })
}

/// What a pooled buffer is for; each kind has its own free lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// Tensor data: storage, copy source and destination.
    Storage,
    /// Kernel parameters: uniform, copy destination.
    Uniform,
}

impl Kind {
    fn usage(self) -> wgpu::BufferUsages {
        match self {
            Kind::Storage => {
                wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST
            }
            Kind::Uniform => wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        }
    }
}

/// The size class of a request: a multiple of 256 bytes rounded up to 2^k · {1, 1.25, 1.5,
/// 1.75}, so that a reused buffer wastes at most a quarter of its size.
fn size_class(bytes: u64) -> u64 {
    let b = bytes.max(256).div_ceil(256) * 256;
    if b <= 4096 {
        return b;
    }
    let top = 63 - b.leading_zeros() as u64; // 2^top <= b < 2^(top+1)
    let base = 1u64 << top;
    let quarter = base / 4;
    let steps = (b - base).div_ceil(quarter);
    base + steps * quarter
}

#[derive(Default)]
struct PoolState {
    free: HashMap<(Kind, u64), Vec<wgpu::Buffer>>,
    /// Freed while a pending encoder may still use them.
    parked: Vec<(Kind, u64, wgpu::Buffer)>,
    /// Whether an encoder is recording (then freed buffers are parked).
    recording: bool,
    idle_bytes: u64,
}

/// Buffers for reuse. Its lock is a leaf: nothing else is locked while it is held.
#[derive(Default)]
pub(crate) struct Pool {
    state: Mutex<PoolState>,
}

impl Pool {
    fn take(&self, kind: Kind, class: u64) -> Option<wgpu::Buffer> {
        let mut s = self.state.lock().ok()?;
        let b = s.free.get_mut(&(kind, class))?.pop()?;
        s.idle_bytes -= class;
        Some(b)
    }

    fn give_back(&self, kind: Kind, class: u64, buffer: wgpu::Buffer) {
        let Ok(mut s) = self.state.lock() else { return };
        if s.recording {
            s.parked.push((kind, class, buffer));
        } else if s.idle_bytes + class <= POOL_CAP_BYTES {
            s.idle_bytes += class;
            s.free.entry((kind, class)).or_default().push(buffer);
        }
    }

    fn set_recording(&self, on: bool) {
        let Ok(mut s) = self.state.lock() else { return };
        s.recording = on;
        if !on {
            let parked = std::mem::take(&mut s.parked);
            for (kind, class, buffer) in parked {
                if s.idle_bytes + class <= POOL_CAP_BYTES {
                    s.idle_bytes += class;
                    s.free.entry((kind, class)).or_default().push(buffer);
                }
            }
        }
    }
}

/// A device buffer on loan from the pool; returned to it when dropped.
pub(crate) struct PooledBuffer {
    buffer: Option<wgpu::Buffer>,
    kind: Kind,
    class: u64,
    pool: Arc<Pool>,
}

impl PooledBuffer {
    pub(crate) fn raw(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("present until drop")
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Some(b) = self.buffer.take() {
            self.pool.give_back(self.kind, self.class, b);
        }
    }
}

impl std::fmt::Debug for PooledBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PooledBuffer({:?}, {} bytes)", self.kind, self.class)
    }
}

struct Batch {
    encoder: Option<wgpu::CommandEncoder>,
    /// Commands recorded in `encoder`.
    recorded: usize,
    in_flight: VecDeque<wgpu::SubmissionIndex>,
}

/// One buffer bound to a kernel: the first `bytes` bytes of `buffer`.
#[derive(Clone, Copy)]
pub(crate) struct Bind<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub bytes: u64,
}

/// Kernel parameters: 32-bit words laid out as the kernel's `Params` struct, padded to 16 bytes.
#[derive(Clone, Debug, Default)]
pub(crate) struct Params(Vec<u32>);

impl Params {
    pub(crate) fn new() -> Self {
        Params(Vec::with_capacity(40))
    }
    /// Appends an unsigned integer.
    pub(crate) fn u(mut self, v: u32) -> Self {
        self.0.push(v);
        self
    }
    /// Appends a float.
    pub(crate) fn f(mut self, v: f32) -> Self {
        self.0.push(v.to_bits());
        self
    }
    /// Appends `table` as `array<vec4<u32>, 8>` (32 words, zero-padded); the header before it
    /// must be a multiple of four words.
    pub(crate) fn table(mut self, table: &[u32]) -> Self {
        debug_assert!(self.0.len().is_multiple_of(4) && table.len() <= 32);
        self.0.extend_from_slice(table);
        self.0.resize(self.0.len() + 32 - table.len(), 0);
        self
    }
    /// The words padded to a multiple of four (16 bytes), at least four.
    fn padded(&self) -> Vec<u32> {
        let mut words = self.0.clone();
        words.resize(words.len().div_ceil(4).max(1) * 4, 0);
        words
    }
    #[cfg(test)]
    fn bytes(&self) -> Vec<u8> {
        bytemuck::cast_slice(&self.padded()).to_vec()
    }
}

/// The device, its queue and everything reused across calls.
pub(crate) struct Context {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pipelines: Mutex<HashMap<Kernel, wgpu::ComputePipeline>>,
    pool: Arc<Pool>,
    batch: Mutex<Batch>,
    staging: Mutex<Option<wgpu::Buffer>>,
    /// Kernel parameters already on the device, by their words (written once, never modified).
    uniforms: Mutex<HashMap<Vec<u32>, Arc<PooledBuffer>>>,
    /// Bits set by kernels that find invalid inputs on the device (labels).
    status: wgpu::Buffer,
    errors: Arc<Mutex<Option<String>>>,
    counters: Counters,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("adapter", &self.info.name)
            .field("backend", &self.info.backend)
            .field("device_type", &self.info.device_type)
            .finish_non_exhaustive()
    }
}

impl Context {
    pub(crate) fn new(device: wgpu::Device, queue: wgpu::Queue, info: wgpu::AdapterInfo) -> Self {
        let errors: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut slot) = sink.lock() {
                slot.get_or_insert_with(|| e.to_string());
            }
        }));
        let sink = errors.clone();
        device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut slot) = sink.lock() {
                slot.get_or_insert_with(|| format!("device lost ({reason:?}): {message}"));
            }
        });
        let status = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("saddle status"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let limits = device.limits();
        Context {
            device,
            queue,
            info,
            limits,
            pipelines: Mutex::new(HashMap::new()),
            pool: Arc::new(Pool::default()),
            batch: Mutex::new(Batch {
                encoder: None,
                recorded: 0,
                in_flight: VecDeque::new(),
            }),
            staging: Mutex::new(None),
            uniforms: Mutex::new(HashMap::new()),
            status,
            errors,
            counters: Counters::default(),
        }
    }

    /// The backend's name for error messages.
    pub(crate) fn backend_name(&self) -> String {
        format!("wgpu ({:?}, {})", self.info.backend, self.info.name)
    }

    pub(crate) fn backend_error(&self, detail: impl Into<String>) -> TensorError {
        TensorError::Backend {
            backend: self.backend_name(),
            detail: detail.into(),
        }
    }

    /// Returns the first error wgpu reported since the last check, naming `op`.
    pub(crate) fn check(&self, op: &str) -> Result<()> {
        let msg = lock(&self.errors, "errors")?.take();
        match msg {
            Some(m) => Err(self.backend_error(format!("{op}: {m}"))),
            None => Ok(()),
        }
    }

    /// The transfers counted since the device was opened.
    pub(crate) fn transfer_counts(&self) -> TransferCounts {
        self.counters.snapshot()
    }

    /// Writes `data` to the start of `buffer` (before the commands of the next submission): the
    /// one place tensor data goes to the device.
    pub(crate) fn upload(&self, buffer: &wgpu::Buffer, data: &[f32]) {
        if data.is_empty() {
            return;
        }
        let bytes: &[u8] = bytemuck::cast_slice(data);
        self.queue.write_buffer(buffer, 0, bytes);
        Counters::add(&self.counters.uploads, 1);
        Counters::add(&self.counters.upload_bytes, bytes.len() as u64);
    }

    /// The uniform buffer holding `params`: from the cache, or written now (the one place
    /// kernel parameters go to the device) into a buffer from the pool. A cached buffer is
    /// never written again, so reusing it while earlier commands may still read it is safe; when
    /// the cache is full its buffers go back to the pool, which parks them until the pending
    /// encoder is submitted (as any freed buffer).
    fn uniform(&self, params: &Params) -> Result<(Arc<PooledBuffer>, u64)> {
        let words = params.padded();
        let size = words.len() as u64 * 4;
        let mut cache = lock(&self.uniforms, "uniforms")?;
        if let Some(b) = cache.get(&words) {
            return Ok((b.clone(), size));
        }
        if cache.len() >= UNIFORM_CACHE_MAX {
            cache.clear();
        }
        let buffer = Arc::new(self.alloc_kind(Kind::Uniform, size)?);
        self.queue
            .write_buffer(buffer.raw(), 0, bytemuck::cast_slice(&words));
        Counters::add(&self.counters.param_uploads, 1);
        Counters::add(&self.counters.param_bytes, size);
        cache.insert(words, buffer.clone());
        Ok((buffer, size))
    }

    /// The largest tensor (bytes) a kernel can bind.
    pub(crate) fn max_binding(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    /// A storage buffer of at least `bytes` bytes, from the pool when one is free.
    pub(crate) fn alloc(&self, op: &str, bytes: u64) -> Result<PooledBuffer> {
        if bytes > self.max_binding() {
            return Err(self.backend_error(format!(
                "{op}: a tensor of {bytes} bytes exceeds the device's largest storage buffer \
                 ({} bytes)",
                self.max_binding()
            )));
        }
        self.alloc_kind(Kind::Storage, bytes)
    }

    fn alloc_kind(&self, kind: Kind, bytes: u64) -> Result<PooledBuffer> {
        let class = match size_class(bytes) {
            c if c <= self.limits.max_buffer_size => c,
            _ => bytes.max(4).div_ceil(4) * 4,
        };
        let buffer = match self.pool.take(kind, class) {
            Some(b) => b,
            None => self.device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: class,
                usage: kind.usage(),
                mapped_at_creation: false,
            }),
        };
        Ok(PooledBuffer {
            buffer: Some(buffer),
            kind,
            class,
            pool: self.pool.clone(),
        })
    }

    fn pipeline(&self, kernel: Kernel) -> Result<wgpu::ComputePipeline> {
        let mut cache = lock(&self.pipelines, "pipelines")?;
        if let Some(p) = cache.get(&kernel) {
            return Ok(p.clone());
        }
        let source = kernel.wgsl()?;
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(kernel.file_name()),
                source: wgpu::ShaderSource::Wgsl(source),
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(kernel.file_name()),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &[],
                    // Every kernel writes its workgroup memory before reading it.
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        self.check(kernel.file_name())?;
        cache.insert(kernel, pipeline.clone());
        Ok(pipeline)
    }

    /// Runs `f` on the pending encoder (created if needed), then submits the batch when it
    /// holds [`MAX_RECORDED`] commands (the safety cap; steps end at `step_end`).
    fn record(&self, f: impl FnOnce(&mut wgpu::CommandEncoder)) -> Result<()> {
        let mut batch = lock(&self.batch, "batch")?;
        if batch.encoder.is_none() {
            self.pool.set_recording(true);
            batch.encoder = Some(self.device.create_command_encoder(
                &wgpu::CommandEncoderDescriptor {
                    label: Some("saddle batch"),
                },
            ));
        }
        f(batch.encoder.as_mut().expect("just created"));
        batch.recorded += 1;
        if batch.recorded >= MAX_RECORDED {
            self.submit(&mut batch)?;
        }
        Ok(())
    }

    fn submit(&self, batch: &mut Batch) -> Result<()> {
        let Some(encoder) = batch.encoder.take() else {
            return Ok(());
        };
        batch.recorded = 0;
        let index = self.queue.submit(Some(encoder.finish()));
        Counters::add(&self.counters.submissions, 1);
        self.pool.set_recording(false);
        batch.in_flight.push_back(index);
        while batch.in_flight.len() > MAX_IN_FLIGHT {
            let oldest = batch.in_flight.pop_front().expect("non-empty");
            self.device
                .poll(wgpu::PollType::Wait {
                    submission_index: Some(oldest),
                    timeout: None,
                })
                .map_err(|e| self.backend_error(format!("waiting for the device: {e}")))?;
        }
        Ok(())
    }

    /// Submits the pending encoder, if any (nothing when no command is pending); does not wait.
    pub(crate) fn flush(&self) -> Result<()> {
        let mut batch = lock(&self.batch, "batch")?;
        self.submit(&mut batch)
    }

    /// Records one dispatch of `kernel` with `params` at binding 0 and `bufs` at bindings
    /// 1, 2, … (the status word last when `status` is set).
    pub(crate) fn dispatch(
        &self,
        kernel: Kernel,
        params: &Params,
        bufs: &[Bind<'_>],
        status: bool,
        groups: [u32; 3],
    ) -> Result<()> {
        let max = self.limits.max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > max) {
            return Err(self.backend_error(format!(
                "{}: {groups:?} workgroups exceed the device's {max} per dimension",
                kernel.file_name()
            )));
        }
        if groups.contains(&0) {
            return Ok(());
        }
        let pipeline = self.pipeline(kernel)?;
        let (ubuf, ubytes) = self.uniform(params)?;
        let mut entries = Vec::with_capacity(bufs.len() + 2);
        entries.push(wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: ubuf.raw(),
                offset: 0,
                size: wgpu::BufferSize::new(ubytes),
            }),
        });
        for (i, b) in bufs.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: b.buffer,
                    offset: 0,
                    size: wgpu::BufferSize::new(b.bytes.max(4)),
                }),
            });
        }
        if status {
            entries.push(wgpu::BindGroupEntry {
                binding: bufs.len() as u32 + 1,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &self.status,
                    offset: 0,
                    size: wgpu::BufferSize::new(4),
                }),
            });
        }
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        self.record(|enc| {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(kernel.file_name()),
                timestamp_writes: None,
            });
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        })?;
        self.check(kernel.file_name())
    }

    /// Records zeroing the first `bytes` bytes of `buffer`.
    pub(crate) fn clear(&self, buffer: &wgpu::Buffer, bytes: u64) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.record(|enc| enc.clear_buffer(buffer, 0, Some(bytes.div_ceil(4) * 4)))
    }

    /// Records a copy of the first `bytes` bytes of `src` into `dst`.
    pub(crate) fn copy(&self, src: &wgpu::Buffer, dst: &wgpu::Buffer, bytes: u64) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.record(|enc| enc.copy_buffer_to_buffer(src, 0, dst, 0, bytes))
    }

    /// Copies the first `len` floats of `src` to the host through the staging buffer, with the
    /// status word; waits for the device. Returns the data and the status bits (then cleared).
    pub(crate) fn read_back(&self, src: &wgpu::Buffer, len: usize) -> Result<(Vec<f32>, u32)> {
        let bytes = (len * 4) as u64;
        let status_at = bytes.div_ceil(256) * 256;
        let need = status_at + 256;
        let mut staging = lock(&self.staging, "staging")?;
        if staging.as_ref().is_none_or(|s| s.size() < need) {
            *staging = Some(self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("saddle staging"),
                size: size_class(need),
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }));
        }
        let stage = staging.as_ref().expect("just created");
        {
            let mut batch = lock(&self.batch, "batch")?;
            if batch.encoder.is_none() {
                self.pool.set_recording(true);
                batch.encoder = Some(self.device.create_command_encoder(
                    &wgpu::CommandEncoderDescriptor {
                        label: Some("saddle read-back"),
                    },
                ));
            }
            let enc = batch.encoder.as_mut().expect("just created");
            if bytes > 0 {
                enc.copy_buffer_to_buffer(src, 0, stage, 0, bytes);
            }
            enc.copy_buffer_to_buffer(&self.status, 0, stage, status_at, 4);
            enc.clear_buffer(&self.status, 0, None);
            self.submit(&mut batch)?;
        }
        self.check("read-back")?;
        let slice = stage.slice(0..status_at + 4);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| self.backend_error(format!("waiting for the device: {e}")))?;
        {
            let mut batch = lock(&self.batch, "batch")?;
            batch.in_flight.clear();
        }
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(self.backend_error(format!("mapping the staging buffer: {e}")))
            }
            Err(_) => return Err(self.backend_error("the staging buffer was never mapped")),
        }
        let (data, status) = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| self.backend_error(format!("reading the staging buffer: {e:?}")))?;
            let data: Vec<f32> = bytemuck::cast_slice(&view[..bytes as usize]).to_vec();
            let at = status_at as usize;
            let status = u32::from_le_bytes([view[at], view[at + 1], view[at + 2], view[at + 3]]);
            (data, status)
        };
        stage.unmap();
        Counters::add(&self.counters.readbacks, 1);
        Counters::add(&self.counters.readback_bytes, bytes + 4);
        self.check("read-back")?;
        Ok((data, status))
    }
}

/// Workgroups for `threads` threads of `per_group` each, folded into 2-D when there are more
/// than `max` along x: `[x, y, 1]` with x·y ≥ the groups needed (kernels compute their index as
/// `id.x + id.y · num_workgroups.x · per_group` and skip indices past the end).
pub(crate) fn groups_1d(items: u64, per_group: u32, max: u32) -> [u32; 3] {
    let groups = items.div_ceil(per_group as u64);
    if groups == 0 {
        return [0, 1, 1];
    }
    let x = groups.min(max as u64);
    let y = groups.div_ceil(x);
    [x as u32, y.min(u32::MAX as u64) as u32, 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_waste_at_most_a_quarter() {
        for bytes in [
            1u64,
            255,
            256,
            4096,
            4097,
            5000,
            1 << 20,
            (1 << 20) + 1,
            3_136_000,
            5_017_600,
        ] {
            let c = size_class(bytes);
            assert!(c >= bytes, "{bytes} -> {c}");
            assert!(c.is_multiple_of(256));
            assert!(
                c <= 4096 || (c as f64) <= bytes as f64 * 1.25 + 256.0,
                "{bytes} -> {c}"
            );
        }
        assert_eq!(size_class(5000), 5120);
    }

    #[test]
    fn groups_fold_into_two_dimensions() {
        assert_eq!(groups_1d(0, 256, 65535), [0, 1, 1]);
        assert_eq!(groups_1d(1, 256, 65535), [1, 1, 1]);
        assert_eq!(groups_1d(257, 256, 65535), [2, 1, 1]);
        let g = groups_1d(70_000 * 256, 256, 65535);
        assert_eq!(g, [65535, 2, 1]);
        assert!(g[0] as u64 * g[1] as u64 >= 70_000);
    }

    #[test]
    fn params_are_padded_to_sixteen_bytes() {
        assert_eq!(Params::new().u(1).bytes().len(), 16);
        assert_eq!(Params::new().u(1).u(2).u(3).u(4).u(5).bytes().len(), 32);
        assert_eq!(
            Params::new().u(1).u(0).u(0).u(0).table(&[7]).bytes().len(),
            16 + 128
        );
    }
}
