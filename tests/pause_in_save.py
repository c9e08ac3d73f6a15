"""Pause every rank inside a checkpoint save, after its files are on disk and before the barrier and the marker,
so that a test can kill -9 the ranks in the middle of a save. Test code: production has no such hook.

    python tests/pause_in_save.py SECONDS[@STEP] launch.train ARGS...   # run a module with the pause installed
    pause_in_save.install("120") / install("300@6")                      # or install it in a process of your own

With @STEP only the save of that step pauses.
"""
import runpy
import sys
import time

from launch import checkpoint as ck


def install(spec: str) -> None:
    seconds, _, only_step = spec.partition("@")
    write_rank_files = ck._write_rank_files

    def write_then_pause(engine, ckpt_dir, tag, state, rank):
        write_rank_files(engine, ckpt_dir, tag, state, rank)
        if not only_step or int(only_step) == state["step"]:
            print(f"checkpoint: {tag} files of rank {rank} written, pausing {seconds}s before the marker", flush=True)
            time.sleep(float(seconds))

    ck._write_rank_files = write_then_pause


if __name__ == "__main__":
    install(sys.argv[1])
    sys.argv = sys.argv[2:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
