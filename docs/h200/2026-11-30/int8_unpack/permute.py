"""A variant of the int8 decode attention's byte-to-float conversion, for measuring against the kernel's own:
four cached bytes at a time, by byte-permute instructions (inline PTX), instead of unpacking each byte and adding.

`patch()` swaps it into regvq_cli.priors.decode_attention_kernel before Triton first compiles the kernel (so in a
process of its own). It runs on a GPU only: Triton's interpreter cannot run PTX.
"""
import triton
import triton.language as tl


@triton.jit
def int8_to_float_permute(x):
    """The same floats as decode_attention_kernel._int8_to_float, 4 values per 32-bit register: x ^ 0x80 is the
    byte x + 128, and each prmt builds 0x4B0000 followed by one such byte, the float 2**23 + x + 128; subtracting
    2**23 + 128 leaves x. One exclusive-or per four values and one permute per value, where the kernel's own
    form unpacks (one instruction) and adds (one) per value."""
    bits = tl.inline_asm_elementwise(
        asm="""{
        .reg .b32 t;
        xor.b32 t, $4, 0x80808080;
        prmt.b32 $0, t, 0x4B000000, 0x7540;
        prmt.b32 $1, t, 0x4B000000, 0x7541;
        prmt.b32 $2, t, 0x4B000000, 0x7542;
        prmt.b32 $3, t, 0x4B000000, 0x7543;
        }""",
        constraints="=r,=r,=r,=r,r", args=[x], dtype=tl.int32, is_pure=True, pack=4)
    return bits.to(tl.float32, bitcast=True) - 8388736.0


def patch() -> None:
    from regvq_cli.priors import decode_attention_kernel

    decode_attention_kernel._int8_to_float = int8_to_float_permute
