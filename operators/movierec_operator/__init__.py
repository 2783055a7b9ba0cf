"""The movierec operator: IndexBuild resources (movierec.io/v1alpha1) → index build Jobs → status.

`jobs` holds the pure builders (spec → Job, Job → status), `handlers` the Kopf handlers, `main` the
`movierec-operator` command. See docs/operator.md.
"""
