"""numba intrinsics for raw addresses: typed pointers and calls through C function pointers.

The kernels that run on torch's OpenMP threads (``_omp``, ``backends/_fixed_kernels``) get
their arguments as one block of 64-bit words: addresses, sizes and constants. Handing numba
integers instead of arrays also saves its per-call typing of each array (about a
microsecond apiece, every minibatch).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic


def _typed_ptr(nbtype):
    @intrinsic
    def ptr(typingctx, addr):
        sig = types.CPointer(nbtype)(types.int64)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(types.CPointer(nbtype)))
        return sig, codegen
    return ptr


_f32_ptr = _typed_ptr(types.float32)
_f64_ptr = _typed_ptr(types.float64)
_i64_ptr = _typed_ptr(types.int64)
_i8_ptr = _typed_ptr(types.int8)
_i16_ptr = _typed_ptr(types.int16)


@intrinsic
def _call_int(typingctx, addr):
    """Call the C function ``int f(void)`` at address ``addr``."""
    sig = types.int32(types.int64)

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.IntType(32), [])
        return builder.call(builder.inttoptr(args[0], fnty.as_pointer()), [])
    return sig, codegen


@intrinsic
def _call_void(typingctx, addr):
    """Call the C function ``void f(void)`` at address ``addr``."""
    sig = types.void(types.int64)

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.VoidType(), [])
        builder.call(builder.inttoptr(args[0], fnty.as_pointer()), [])
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def _gomp_parallel(typingctx, gomp_parallel, fn, data, n_threads):
    """``GOMP_parallel(fn, data, n_threads, 0)`` through the function's address."""
    sig = types.void(types.int64, types.int64, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i8p, i32, i32])
        builder.call(builder.inttoptr(args[0], fnty.as_pointer()),
                     [builder.inttoptr(args[1], i8p), builder.inttoptr(args[2], i8p),
                      builder.trunc(args[3], i32), ir.Constant(i32, 0)])
        return context.get_dummy_value()
    return sig, codegen


# fastmath is set here and NOT on the cfunc below: numba lets a callee that does not set
# fastmath inherit the caller's, and ``modulation`` must keep its NaN/Inf checks (a
# fastmath cfunc also wrote a fastmath ``modulation`` into that kernel's on-disk cache).


@intrinsic
def _sgemm(typingctx, fn, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """Fortran ``sgemm_`` at address ``fn`` (every argument passed by reference)."""
    i64, f32t = types.int64, types.float32
    sig = types.void(i64, i64, i64, i64, i64, i64, f32t, i64, i64, i64, i64, f32t, i64, i64)

    def codegen(context, builder, signature, args):
        i8, i32, f32 = ir.IntType(8), ir.IntType(32), ir.FloatType()

        def ref(ty, v):
            slot = builder.alloca(ty)
            builder.store(v, slot)
            return slot

        def int_ref(ty, v):
            return ref(ty, builder.trunc(v, ty))

        fn_, ta, tb, m_, n_, k_, al, a_, lda_, b_, ldb_, be, c_, ldc_ = args
        argv = [int_ref(i8, ta), int_ref(i8, tb), int_ref(i32, m_), int_ref(i32, n_),
                int_ref(i32, k_), ref(f32, al), builder.inttoptr(a_, f32.as_pointer()),
                int_ref(i32, lda_), builder.inttoptr(b_, f32.as_pointer()), int_ref(i32, ldb_),
                ref(f32, be), builder.inttoptr(c_, f32.as_pointer()), int_ref(i32, ldc_)]
        fnty = ir.FunctionType(ir.VoidType(), [v.type for v in argv])
        builder.call(builder.inttoptr(fn_, fnty.as_pointer()), argv)
        return context.get_dummy_value()
    return sig, codegen
