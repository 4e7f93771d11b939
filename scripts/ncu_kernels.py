"""Kernels of an Nsight Compute CSV (`ncu --csv --print-units base --metrics ...`), for the
profile scripts (decode-profile.sh, ceiling-profile.sh): one dict a profiled launch, in
launch order, with its "name" and each metric's value as a float."""
import collections
import csv


def kernels(path):
    rows = [r for r in csv.reader(l for l in open(path) if l.startswith('"'))]
    head, rows = rows[0], rows[1:]
    ix = {k: i for i, k in enumerate(head)}
    kern = collections.OrderedDict()
    for r in rows:
        k = kern.setdefault(int(r[ix["ID"]]), {"name": r[ix["Kernel Name"]]})
        k[r[ix["Metric Name"]]] = float(r[ix["Metric Value"]].replace(",", ""))
    return list(kern.values())
