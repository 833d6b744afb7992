"""The parts of ``kubectl asrflow`` (its click commands: :mod:`pipelines.kubectl_plugin`).

:mod:`.pods` reads one pod (its run, step, retry and state) and picks the pod whose log to
show; :mod:`.summary` sums pods and TrainJobs into runs and steps; :mod:`.report` renders
them as a table, JSON or YAML; :mod:`.kubeconfig` finds the cluster and namespace as kubectl
does; :mod:`.cluster` asks the API server and explains its failures in one line.
"""
