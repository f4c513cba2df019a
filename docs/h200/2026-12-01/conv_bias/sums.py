"""Run a script with the norms taking the channel sums add_biases_ leaves on its result (`on`, as regvq now runs)
or summing again themselves (`off`: the sums dropped): `python sums.py on|off SCRIPT ARGS...`."""
import runpy
import sys

mode, script = sys.argv[1], sys.argv[2]
if mode == "off":
    import regvq_cli.tokenizer.nets as nets

    add = nets.add_biases_

    def add_without_sums(*args):
        out = add(*args)
        out.__dict__.pop("regvq_channel_sums", None)
        return out

    nets.add_biases_ = add_without_sums
sys.argv = [script] + sys.argv[3:]
runpy.run_path(script, run_name="__main__")
