"""Gin files, not code: this file lets gin find them as a Python package.

gin tries an include such as 'gin_configs/t5x/train.gin' as a package
path when the checkout is on sys.path; a folder without this file is a
namespace package there, on which gin stops with a TypeError. T5X ships
the same empty files beside its own gin files.
"""
