"""Data: video → frames → examples.

`video` decodes files and frame folders; `shots` is the shot cache (detector scores, once per
video); `clips` is the one clip loader training and evaluation share; `tasks` turns a video's
material into a training conversation; `prompts` and `tokenizers` make tokens; `synthetic` and
`longvideo` make videos; `records` and `formats` read datasets; `pipeline` batches with Grain.
A new dataset format is a converter registered in `formats.FORMATS`; a new training task a
function registered in `tasks.TASKS`.
"""
