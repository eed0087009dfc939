"""The main job, `dss-jax distill`: card -> teacher -> TFDS -> SeqIO -> train.

  config    `DistillConfig`, the demo's and the paper's presets, students
  stages    1. the teacher's annotations, 2. the annotated TFDS dataset
  student   3. one student: its SeqIO tasks, training, scoring, examples
  job       the whole job: the stages in order, workers, 4. the report
  __main__  the command line (`python -m dss_jax.distill`)

This file imports nothing: the command line parses its flags (and sends
TensorFlow's native output to the job's log) before the job's modules load
TensorFlow and JAX.
"""
