"""Streaming (non-temporal) stores for the saved activations of big calls.

Why.  A training forward writes its saved activations once (the LSTM's
gates, cell states, tanh(c), [x_t | h_prev] rows: 17 MB at S3) and BPTT
reads them back only after the whole loop.  In a PyTorch program the
calls in between (a torch.nn layer, MKL's GEMMs) have pushed those
buffers' lines out to DRAM, and an ordinary store to a line that is not
in cache first reads it (read-for-ownership): twice the DRAM traffic, in
the middle of the step loop.  A streaming store writes whole lines
without reading them and without keeping them in cache.  Measured (the
twenty-seventh session's Intel VM, fastrnn.torch.LSTM right after a
torch.nn call, the two builds in separate processes taking turns, three
rounds): S3 forward 9.19-9.44 against 9.68-10.08 ms, backward level; S4
forward 54.6-55.8 against 58.9-59.0 and backward 97.7-100.6 against
104.0-104.5; the LSTM training loop's forward 9.07-9.28 against
9.49-10.01.  Small calls lose (S1 forward 398-433 against 350-385 us:
their saves would have stayed in L2 for BPTT), S2 level: so only from
numba_cpu.STREAM_SAVES_MIN_BYTES.  The BPTT parts by rows write the gate
gradients dG the same way (numba_cpu.STREAM_DG): S3 fwd+bwd another
1.023-1.026x.

How.  put_row copies one row of a step's values, already computed into
an L1-resident scratch row (or held in the working state), to its place
in a (T, B, n) saved array with 512-bit streaming stores where that row
starts on a 64-byte line and spans whole lines of float32 (the buffer
cache aligns arrays to lines; numba_cpu), else with plain stores.
Streaming stores are weakly ordered: a part calls fence() (SFENCE) once
after its loop, before the region's join hands the buffers to BPTT on
other threads.  x86-64 only (STREAMS); elsewhere every row takes the
plain stores and fence() emits nothing.
"""
import platform

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .common import inner

STREAMS = platform.machine().lower() in ("x86_64", "amd64")
_LINE = 64


@intrinsic
def _stream_lines(typingctx, dst, src, lines):
    """Copy `lines` * 64 bytes from address src (any float alignment) to
    address dst (64-byte aligned) by non-temporal 512-bit stores (LLVM
    splits them into what the target has)."""
    if not all(isinstance(a, types.Integer) for a in (dst, src, lines)):
        return None
    sig = types.void(types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        d, s, n = args
        vt = ir.VectorType(ir.FloatType(), _LINE // 4)
        intp = d.type
        fn = builder.function
        entry = builder.block
        head = fn.append_basic_block("nt_head")
        body = fn.append_basic_block("nt_body")
        done = fn.append_basic_block("nt_done")
        builder.branch(head)
        builder.position_at_end(head)
        i = builder.phi(intp)
        i.add_incoming(ir.Constant(intp, 0), entry)
        builder.cbranch(builder.icmp_signed("<", i, n), body, done)
        builder.position_at_end(body)
        off = builder.mul(i, ir.Constant(intp, _LINE))
        v = builder.load(builder.inttoptr(builder.add(s, off), vt.as_pointer()), align=4)
        st = builder.store(v, builder.inttoptr(builder.add(d, off), vt.as_pointer()), align=_LINE)
        st.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
        i.add_incoming(builder.add(i, ir.Constant(intp, 1)), body)
        builder.branch(head)
        builder.position_at_end(done)
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def fence(typingctx):
    """SFENCE on x86-64 (orders the streaming stores before later ones);
    nothing elsewhere."""
    def codegen(context, builder, signature, args):
        if STREAMS:
            mod = builder.module
            f = mod.globals.get("llvm.x86.sse.sfence")
            if f is None:
                f = ir.Function(mod, ir.FunctionType(ir.VoidType(), []), name="llvm.x86.sse.sfence")
            builder.call(f, [])
        return context.get_dummy_value()
    return types.none(), codegen


@inner
def put_row(a, t, b, src, j, k0, w):
    """a[t, b, :w] = src[j, k0:k0 + w] for a 3-D and src a 2-D array of
    the same dtype: by streaming stores where a's row starts on a line,
    w float32 fill whole lines and both arrays' last axes are contiguous
    (the caller has checked 0 <= k0, k0 + w <= src.shape[1], w <=
    a.shape[2] and the indices), else by plain stores."""
    dst = a.ctypes.data + t * a.strides[0] + b * a.strides[1]
    nbytes = w * a.itemsize
    if (STREAMS and a.itemsize == 4 and src.itemsize == 4 and a.strides[2] == 4 and src.strides[1] == 4
            and dst % _LINE == 0 and nbytes % _LINE == 0):
        _stream_lines(dst, src.ctypes.data + j * src.strides[0] + 4 * k0, nbytes // _LINE)
    else:
        for k in range(w):
            a[t, b, k] = src[j, k0 + k]
