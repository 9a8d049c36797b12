"""The report's sections, one module per group, each turning an ``Analysis`` into document blocks:

* ``opening``: title, summary, provenance;
* ``accuracy``: the paper's Table 3 per split, partner drops, lambda and training curves,
  Figure 2, the final model set, multi-task over all attributes;
* ``matrices``: the pairwise matrix (Table 4, heatmap, CSVs), label correlation (Figure 3);
* ``ablations``: Table 1 and, on CelebA, the published numbers (Table 2);
* ``significance``: the paper's z-test (appendix A.1) and the paired tests;
* ``discovery``: partner discovery methods compared, the affinity heatmap;
* ``runs``: successive halving, compute per stage, missing runs.
"""
