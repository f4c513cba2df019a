"""Run a script with `regvq decode`'s PNG writing as now (`rows`: scanlines filtered on the device, deflated by the
threads), as before (`pillow`: uint8 pixels to Pillow's writer in the threads), as now with the interpreter's
switch interval at 0.5 ms (`rows_si`), or as now deflated by zlib-ng (`rows_ng`, where it is importable):
`python ab.py rows|pillow|rows_si|rows_ng SCRIPT ARGS...`. It patches engine.decode as it was in the runs of run.sh (code
not committed as such: a task a file, `decode.write_rows`, before 00f3cc5); since a521603 the threads are
engine.png.PngWriter, and `pillow` no longer applies."""
import runpy
import sys
import zlib

mode, script = sys.argv[1], sys.argv[2]
if mode == "pillow":
    from PIL import Image

    from regvq_cli.engine import decode
    from regvq_cli.engine.png import write_png_file  # noqa: F401  (the module as it is now)
    from regvq_cli.engine.runtime import TokenizerRunner

    def pillow_save(pixels, path):
        tmp = f"{path}.tmp"
        Image.fromarray(pixels).save(tmp, format="PNG", compress_level=1, compress_type=zlib.Z_HUFFMAN_ONLY)
        import os
        os.replace(tmp, path)

    TokenizerRunner.decode_png_rows = TokenizerRunner.decode_uint8
    decode.write_rows = pillow_save
elif mode == "rows_si":
    sys.setswitchinterval(0.0005)
elif mode == "rows_ng":
    from zlib_ng import zlib_ng

    from regvq_cli.engine import png

    png.zlib = zlib_ng
sys.argv = [script] + sys.argv[3:]
runpy.run_path(script, run_name="__main__")
