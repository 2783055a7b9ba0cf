{{/* Names, labels and the pieces every workload shares. */}}

{{- define "movierec.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name: release name, plus the chart name unless the release name contains it. */}}
{{- define "movierec.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* A component's name: movierec.component (dict "ctx" $ "name" "api") */}}
{{- define "movierec.component" -}}
{{- printf "%s-%s" (include "movierec.fullname" .ctx) .name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "movierec.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of a component: (dict "ctx" $ "component" "api") */}}
{{- define "movierec.selectorLabels" -}}
app.kubernetes.io/name: {{ include "movierec.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Every label of a component's objects: (dict "ctx" $ "component" "api") */}}
{{- define "movierec.labels" -}}
helm.sh/chart: {{ include "movierec.chart" .ctx }}
{{ include "movierec.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: movierec
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "movierec.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "movierec.torchserveImage" -}}
{{- printf "%s:%s" .Values.torchserve.image.repository (default .Chart.AppVersion .Values.torchserve.image.tag) }}
{{- end }}

{{- define "movierec.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "movierec.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The claim of a volume: (dict "ctx" $ "name" "model"|"index"|"data") */}}
{{- define "movierec.claim" -}}
{{- default (include "movierec.component" (dict "ctx" .ctx "name" .name)) (get .ctx.Values.persistence .name).existingClaim }}
{{- end }}

{{- define "movierec.modelClaim" -}}
{{- include "movierec.claim" (dict "ctx" . "name" "model") }}
{{- end }}

{{/* Secrets: the chart's own or the ones the user manages. */}}
{{- define "movierec.authSecret" -}}
{{- default (include "movierec.fullname" .) .Values.auth.existingSecret }}
{{- end }}

{{- define "movierec.mongodbSecret" -}}
{{- if .Values.mongodb.enabled }}
{{- default (include "movierec.component" (dict "ctx" . "name" "mongodb")) .Values.mongodb.auth.existingSecret }}
{{- else }}
{{- default (include "movierec.component" (dict "ctx" . "name" "mongodb")) .Values.mongodb.external.existingSecret }}
{{- end }}
{{- end }}

{{- define "movierec.redisSecret" -}}
{{- if .Values.redis.enabled }}
{{- default (include "movierec.component" (dict "ctx" . "name" "redis")) .Values.redis.existingSecret }}
{{- else }}
{{- default (include "movierec.component" (dict "ctx" . "name" "redis")) .Values.redis.external.existingSecret }}
{{- end }}
{{- end }}

{{- define "movierec.redisSecretKey" -}}
{{- if and (not .Values.redis.enabled) .Values.redis.external.existingSecret }}{{ .Values.redis.external.existingSecretKey }}{{ else }}redis-password{{ end }}
{{- end }}

{{/* Redis has a password: always for the chart's own, for an external one when given. */}}
{{- define "movierec.redisAuth" -}}
{{- if or .Values.redis.enabled .Values.redis.external.password .Values.redis.external.existingSecret }}true{{ end }}
{{- end }}

{{- define "movierec.redisHost" -}}
{{- if .Values.redis.enabled }}
{{- include "movierec.component" (dict "ctx" . "name" "redis") }}
{{- else }}
{{- required "redis.external.host is required when redis.enabled is false" .Values.redis.external.host }}
{{- end }}
{{- end }}

{{- define "movierec.redisPort" -}}
{{- if .Values.redis.enabled }}6379{{ else }}{{ .Values.redis.external.port }}{{ end }}
{{- end }}

{{/* A Redis URL for Celery; the password comes from $(REDIS_PASSWORD), expanded by the kubelet. */}}
{{- define "movierec.redisUrl" -}}
{{- $auth := ternary ":$(REDIS_PASSWORD)@" "" (eq (include "movierec.redisAuth" .ctx) "true") }}
{{- printf "redis://%s%s:%s/%d" $auth (include "movierec.redisHost" .ctx) (include "movierec.redisPort" .ctx) (int .db) }}
{{- end }}

{{- define "movierec.mongodbHost" -}}
{{- printf "%s-0.%s.%s.svc" (include "movierec.component" (dict "ctx" . "name" "mongodb")) (include "movierec.component" (dict "ctx" . "name" "mongodb")) .Release.Namespace }}
{{- end }}

{{- define "movierec.qdrantEnabled" -}}
{{- if or .Values.qdrant.enabled .Values.qdrant.external.url }}true{{ end }}
{{- end }}

{{- define "movierec.qdrantHost" -}}
{{- if .Values.qdrant.enabled }}
{{- include "movierec.component" (dict "ctx" . "name" "qdrant") }}
{{- else }}
{{- (urlParse .Values.qdrant.external.url).hostname }}
{{- end }}
{{- end }}

{{- define "movierec.qdrantPort" -}}
{{- if .Values.qdrant.enabled }}6333{{ else }}
{{- $host := (urlParse .Values.qdrant.external.url).host }}
{{- if contains ":" $host }}{{ last (splitList ":" $host) }}{{ else }}6333{{ end }}
{{- end }}
{{- end }}

{{/* The predictor's Service: <isvc>-predictor in both deployment modes (KServe names it so). */}}
{{- define "movierec.isvcName" -}}
{{- include "movierec.component" (dict "ctx" . "name" "model") }}
{{- end }}

{{- define "movierec.predictorHost" -}}
{{- printf "%s-predictor.%s.svc.cluster.local" (include "movierec.isvcName" .) .Release.Namespace }}
{{- end }}

{{- define "movierec.storageUri" -}}
{{- if .Values.torchserve.storageUri }}
{{- .Values.torchserve.storageUri }}
{{- else }}
{{- printf "pvc://%s/%s" (include "movierec.modelClaim" .) .Values.persistence.torchserveSubPath }}
{{- end }}
{{- end }}

{{/* Pod-level pieces shared by every movierec pod. */}}
{{- define "movierec.podCommon" -}}
serviceAccountName: {{ include "movierec.serviceAccountName" . }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "movierec.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Writable folders on a read-only root: /tmp (caches, matplotlib, Celery's schedule). */}}
{{- define "movierec.tmpEnv" -}}
- name: HOME
  value: /tmp
- name: XDG_CACHE_HOME
  value: /tmp/.cache
- name: MPLCONFIGDIR
  value: /tmp/.config/matplotlib
{{- end }}

{{/* What the API and the worker read from the environment (services/movierec/settings.py). */}}
{{- define "movierec.appEnv" -}}
- name: MOVIEREC_HOME
  value: {{ .Values.persistence.mountPath | quote }}
{{- if .Values.auth.apiKeyEnabled }}
- name: API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "movierec.authSecret" . }}
      key: api-key
{{- end }}
{{- if .Values.mongodb.enabled }}
- name: MONGODB_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "movierec.mongodbSecret" . }}
      key: mongodb-password
- name: MONGO_URI
  value: {{ printf "mongodb://%s:$(MONGODB_PASSWORD)@%s:27017/%s?authSource=%s" .Values.mongodb.auth.username (include "movierec.mongodbHost" .) .Values.mongodb.auth.database .Values.mongodb.auth.database | quote }}
{{- else }}
- name: MONGO_URI
  valueFrom:
    secretKeyRef:
      name: {{ include "movierec.mongodbSecret" . }}
      key: {{ ternary .Values.mongodb.external.existingSecretKey "mongodb-uri" (ne .Values.mongodb.external.existingSecret "") }}
{{- end }}
- name: REDIS_HOST
  value: {{ include "movierec.redisHost" . | quote }}
- name: REDIS_PORT
  value: {{ include "movierec.redisPort" . | quote }}
{{- if include "movierec.redisAuth" . }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "movierec.redisSecret" . }}
      key: {{ include "movierec.redisSecretKey" . }}
{{- end }}
{{- if include "movierec.qdrantEnabled" . }}
- name: QDRANT_HOST
  value: {{ include "movierec.qdrantHost" . | quote }}
- name: QDRANT_PORT
  value: {{ include "movierec.qdrantPort" . | quote }}
{{- end }}
{{- include "movierec.celeryEnv" . }}
{{- include "movierec.tmpEnv" . | nindent 0 }}
{{- end }}

{{- define "movierec.celeryEnv" -}}
{{- if .Values.worker.enabled }}
- name: CELERY_BROKER_URL
  value: {{ include "movierec.redisUrl" (dict "ctx" . "db" 1) | quote }}
- name: CELERY_RESULT_BACKEND
  value: {{ include "movierec.redisUrl" (dict "ctx" . "db" 2) | quote }}
{{- end }}
{{- end }}

{{/* Celery-only pods (beat, Flower): the broker, nothing else. */}}
{{- define "movierec.brokerEnv" -}}
{{- if include "movierec.redisAuth" . }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "movierec.redisSecret" . }}
      key: {{ include "movierec.redisSecretKey" . }}
{{- end }}
- name: CELERY_BROKER_URL
  value: {{ include "movierec.redisUrl" (dict "ctx" . "db" 1) | quote }}
- name: CELERY_RESULT_BACKEND
  value: {{ include "movierec.redisUrl" (dict "ctx" . "db" 2) | quote }}
{{- include "movierec.tmpEnv" . | nindent 0 }}
{{- end }}

{{/* Volumes of a pod: (dict "ctx" $ "volumes" (dict "model" true "index" false ...)) mounts each named volume
at MOVIEREC_HOME/<name> (true: read-only), an emptyDir at MOVIEREC_HOME (the image's home stays writable
under a read-only root) and one at /tmp. */}}
{{- define "movierec.volumes" -}}
- name: home
  emptyDir: {}
- name: tmp
  emptyDir: {}
{{- range $name, $readOnly := .volumes }}
- name: {{ $name }}
  persistentVolumeClaim:
    claimName: {{ include "movierec.claim" (dict "ctx" $.ctx "name" $name) }}
{{- end }}
{{- end }}

{{- define "movierec.volumeMounts" -}}
- name: home
  mountPath: {{ .ctx.Values.persistence.mountPath }}
- name: tmp
  mountPath: /tmp
{{- range $name, $readOnly := .volumes }}
- name: {{ $name }}
  mountPath: {{ printf "%s/%s" $.ctx.Values.persistence.mountPath $name }}
  {{- if $readOnly }}
  readOnly: true
  {{- end }}
{{- end }}
{{- end }}

{{/* resources with an optional GPU: (dict "resources" ... "gpus" N "name" "nvidia.com/gpu") */}}
{{- define "movierec.resourcesWithGpu" -}}
{{- $res := deepCopy .resources }}
{{- if gt (int .gpus) 0 }}
{{- $limits := default (dict) (get $res "limits") }}
{{- $_ := set $limits .name (int .gpus) }}
{{- $_ := set $res "limits" $limits }}
{{- $requests := default (dict) (get $res "requests") }}
{{- $_ := set $requests .name (int .gpus) }}
{{- $_ := set $res "requests" $requests }}
{{- end }}
{{- toYaml $res }}
{{- end }}

{{/* A NetworkPolicy peer: the pods of one component of this release. */}}
{{- define "movierec.peer" -}}
- podSelector:
    matchLabels:
      {{- include "movierec.selectorLabels" . | nindent 6 }}
{{- end }}

{{/* The training container: (dict "ctx" $ "device" "cuda" "torchrun" (list ...)) */}}
{{- define "movierec.trainContainer" -}}
{{- $t := .ctx.Values.training -}}
name: train
image: {{ include "movierec.image" .ctx }}
imagePullPolicy: {{ .ctx.Values.image.pullPolicy }}
command:
  {{- toYaml .torchrun | nindent 2 }}
  - movierec
  - train
  - --data
  - {{ printf "%s/data/%s" .ctx.Values.persistence.mountPath $t.data | quote }}
  - --out
  - {{ printf "%s/model" .ctx.Values.persistence.mountPath | quote }}
  - --device
  - {{ .device }}
  - --resume
  {{- range $t.extraArgs }}
  - {{ . | quote }}
  {{- end }}
env:
  - name: MOVIEREC_HOME
    value: {{ .ctx.Values.persistence.mountPath | quote }}
  {{- include "movierec.tmpEnv" .ctx | nindent 2 }}
  {{- with .extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
resources:
  {{- include "movierec.resourcesWithGpu" (dict "resources" $t.resources "gpus" $t.gpusPerNode "name" .ctx.Values.torchserve.gpu.resourceName) | nindent 2 }}
securityContext:
  {{- toYaml .ctx.Values.containerSecurityContext | nindent 2 }}
volumeMounts:
  {{- include "movierec.volumeMounts" (dict "ctx" .ctx "volumes" (dict "data" true "model" false)) | nindent 2 }}
  # NCCL and gloo exchange through shared memory
  - name: dshm
    mountPath: /dev/shm
{{- end }}

{{/* Validations that the schema cannot express. */}}
{{- define "movierec.validate" -}}
{{- if and (not .Values.mongodb.enabled) (not .Values.mongodb.external.uri) (not .Values.mongodb.external.existingSecret) }}
{{- fail "mongodb.external.uri (or mongodb.external.existingSecret) is required when mongodb.enabled is false" }}
{{- end }}
{{- if and (not .Values.redis.enabled) (not .Values.redis.external.host) }}
{{- fail "redis.external.host is required when redis.enabled is false" }}
{{- end }}
{{- if and (eq (int .Values.torchserve.autoscaling.minReplicas) 0) (ne .Values.torchserve.deploymentMode "Serverless") }}
{{- fail "torchserve.autoscaling.minReplicas: 0 (scale to zero) needs torchserve.deploymentMode Serverless" }}
{{- end }}
{{- if and .Values.beat.enabled (not .Values.worker.enabled) }}
{{- fail "beat.enabled needs worker.enabled (beat only schedules tasks for the worker)" }}
{{- end }}
{{- if and .Values.flower.enabled (not .Values.worker.enabled) }}
{{- fail "flower.enabled needs worker.enabled" }}
{{- end }}
{{- if gt (int .Values.torchserve.autoscaling.minReplicas) (int .Values.torchserve.autoscaling.maxReplicas) }}
{{- fail "torchserve.autoscaling.minReplicas must not exceed torchserve.autoscaling.maxReplicas" }}
{{- end }}
{{- if gt (int .Values.api.autoscaling.minReplicas) (int .Values.api.autoscaling.maxReplicas) }}
{{- fail "api.autoscaling.minReplicas must not exceed api.autoscaling.maxReplicas" }}
{{- end }}
{{- end }}
