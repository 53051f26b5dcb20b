"""Decode throughput of our reader against the ffmpeg command line, and streaming memory.

Throughput: the same file decoded to the same RGB size by (a) `ffmpeg ... -f rawvideo -` read
from a pipe (the reference), (b) PyAV's bare decode loop and (c) our `iter_frames`; repeats
alternate so machine load hits all alike, and the best of each counts. Wall time and CPU time
(user + system of every thread, and of ffmpeg's process) are both reported: on a shared machine
CPU time is the steadier measure of work. If `ffmpeg` is not on PATH, (b) is the reference.
Random access is timed too (frames by index, exact).

Memory: peak RSS of a fresh process streaming the clip once, and a clip made by concatenating
it `--repeat` times (packets copied, no re-encoding); equal peaks show memory does not grow with
the video's length.

  python tools/bench_decode.py [--video PATH] [--size 64x36] [--repeats 3] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import av
import numpy as np


def ffmpeg_decode(path: str, size: tuple[int, int], threads: int) -> int:
  cmd = ["ffmpeg", "-v", "error", "-threads", str(threads), "-i", path, "-an",
         "-vf", f"scale={size[0]}:{size[1]}:flags=bilinear", "-f", "rawvideo", "-pix_fmt", "rgb24",
         "-"]
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
  n = 0
  while block := proc.stdout.read(1 << 20):
    n += len(block)
  if proc.wait():
    raise RuntimeError(f"ffmpeg failed on {path}")
  return n // (size[0] * size[1] * 3)


def pyav_decode(path: str, size: tuple[int, int]) -> int:
  from av.video.reformatter import VideoReformatter
  n, scaler = 0, VideoReformatter()
  with av.open(path) as c:
    s = c.streams.video[0]
    s.thread_type = "AUTO"
    for f in c.decode(s):
      scaler.reformat(f, width=size[0], height=size[1], format="rgb24").to_ndarray()
      n += 1
  return n


def ours_decode(path: str, size: tuple[int, int]) -> int:
  from longvid_jax.data import video
  return sum(len(c) for c in video.iter_frames(path, chunk_size=256, size=size))


def concat(src: str, dst: str, times: int) -> None:
  """`times` copies of src's video packets back to back, timestamps shifted (no re-encode)."""
  with av.open(src) as first:
    template = first.streams.video[0]
    out = av.open(dst, "w")
    ost = out.add_stream_from_template(template)
  offset = 0
  for _ in range(times):
    with av.open(src) as c:
      ist = c.streams.video[0]
      end = 0
      for p in c.demux(ist):
        if p.dts is None:
          continue
        end = max(end, p.pts + (p.duration or 0))
        p.pts += offset
        p.dts += offset
        p.stream = ost
        out.mux(p)
      offset += end
  out.close()


def cpu_seconds() -> float:
  """User + system time of this process (all threads) and of finished child processes."""
  me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
  return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def child_rss(path: str, size: tuple[int, int]) -> dict:
  """Run in a fresh process: stream `path`, report frames and peak RSS."""
  out = subprocess.run([sys.executable, __file__, "--rss-child", path, "--size",
                        f"{size[0]}x{size[1]}"], capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--video", help="default: the offline cuts_video asset (160x90, 212 s)")
  ap.add_argument("--size", default="64x36", help="output WxH for every decoder")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--repeat", type=int, default=3, help="copies in the long-video memory test")
  ap.add_argument("--threads", type=int, default=2, help="ffmpeg decode threads")
  ap.add_argument("--rss-child", help=argparse.SUPPRESS)
  args = ap.parse_args()
  size = tuple(int(x) for x in args.size.split("x"))

  if args.rss_child:
    import longvid_jax.data.video  # noqa: F401 - count the import in the baseline
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    n = ours_decode(args.rss_child, size)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"frames": n, "baseline_mib": base / 1024, "peak_mib": peak / 1024}))
    return 0

  from longvid_jax.assets import asset
  from longvid_jax.data import video
  path = args.video or str(asset("cuts_video"))
  info = video.probe(path)
  print(f"{path}: {info.num_frames} frames {info.width}x{info.height} {info.codec}, "
        f"{info.duration:.1f} s; decoding to {size[0]}x{size[1]} rgb24")
  runs = {"pyav loop": lambda: pyav_decode(path, size), "ours": lambda: ours_decode(path, size)}
  has_ffmpeg = shutil.which("ffmpeg") is not None
  if has_ffmpeg:
    runs = {"ffmpeg cli": lambda: ffmpeg_decode(path, size, args.threads), **runs}
  else:
    print("ffmpeg not on PATH: the PyAV decode loop is the reference")
  ref = "ffmpeg cli" if has_ffmpeg else "pyav loop"
  best = {k: float("inf") for k in runs}
  cpu = {k: float("inf") for k in runs}
  for _ in range(args.repeats):
    for name, fn in runs.items():
      c0, t = cpu_seconds(), time.perf_counter()
      n = fn()
      best[name] = min(best[name], time.perf_counter() - t)
      cpu[name] = min(cpu[name], cpu_seconds() - c0)
      if n != info.num_frames:
        raise RuntimeError(f"{name} decoded {n} frames, expected {info.num_frames}")
  for name, t in best.items():
    print(f"  {name:<11} {info.num_frames / t:7.0f} frames/s wall ({t:.2f} s), "
          f"{info.num_frames / cpu[name]:7.0f} frames per CPU-second")
  print(f"  ours/{ref} speed: {best[ref] / best['ours']:.2f} (wall), "
        f"{cpu[ref] / cpu['ours']:.2f} (CPU time)")

  rng = np.random.default_rng(0)
  idx = rng.integers(0, info.num_frames, 32)
  t = time.perf_counter()
  video.read_frames(path, idx, size=size)
  dt = time.perf_counter() - t
  print(f"  random access: 32 frames by index (exact) in {dt:.2f} s "
        f"({dt / best['ours'] * 100:.0f}% of a full decode)")

  with tempfile.TemporaryDirectory() as tmp:
    long_path = f"{tmp}/long.mp4"
    concat(path, long_path, args.repeat)
    short, long = child_rss(path, size), child_rss(long_path, size)
  minutes = info.duration * args.repeat / 60
  print(f"streaming memory (fresh process, chunks of 256 at {size[0]}x{size[1]}):")
  print(f"  {info.duration / 60:5.1f} min, {short['frames']:6d} frames: peak RSS "
        f"{short['peak_mib']:.0f} MiB (after imports {short['baseline_mib']:.0f} MiB)")
  print(f"  {minutes:5.1f} min, {long['frames']:6d} frames: peak RSS "
        f"{long['peak_mib']:.0f} MiB (after imports {long['baseline_mib']:.0f} MiB)")
  print(f"  growth {long['peak_mib'] - short['peak_mib']:+.1f} MiB for "
        f"{long['frames'] - short['frames']} more frames")
  return 0


if __name__ == "__main__":
  sys.exit(main())
