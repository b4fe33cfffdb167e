{{/* Names: <release>-kb unless the release name already says kb. */}}
{{- define "kb.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kb.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "kb.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "kb.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kb
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "api") */}}
{{- define "kb.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kb.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "kb.componentLabels" -}}
{{ include "kb.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "kb.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kb.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kb.image" -}}
{{ printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end -}}

{{- define "kb.secretName" -}}
{{- .Values.secrets.existingSecret | default (include "kb.fullname" .) -}}
{{- end -}}

{{- define "kb.generatorBaseUrl" -}}
{{- if .Values.vllm.enabled -}}
{{- printf "http://%s-vllm:%v/v1" (include "kb.fullname" .) .Values.vllm.port -}}
{{- else -}}
{{- required "vllm.generatorBaseUrl is required when vllm.enabled is false" .Values.vllm.generatorBaseUrl -}}
{{- end -}}
{{- end -}}

{{- define "kb.modelsClaim" -}}
{{- .Values.models.existingClaim | default (printf "%s-models" (include "kb.fullname" .)) -}}
{{- end -}}

{{- define "kb.blobsClaim" -}}
{{- .Values.blobs.files.existingClaim | default (printf "%s-blobs" (include "kb.fullname" .)) -}}
{{- end -}}

{{/* The ConfigMap's data: the free settings, then what the chart's own sections decide. */}}
{{- define "kb.configData" -}}
{{- range $managed := list "KB_GENERATOR__BASE_URL" "KB_INDEX__BACKEND" "KB_INDEX__URL" "KB_INDEX__API_KEY" "KB_INDEX__SHARDS" "KB_INDEX__REPLICATION_FACTOR" "KB_INDEX__WRITE_CONSISTENCY_FACTOR" "KB_INDEX__STORAGE" "KB_BLOBS__BACKEND" "KB_BLOBS__DIR" "KB_BLOBS__S3_BUCKET" "KB_BLOBS__S3_PREFIX" "KB_BLOBS__S3_ENDPOINT_URL" "KB_BLOBS__S3_REGION" "KB_RATE_LIMIT__REDIS_URL" "KB_REGISTRY_URL" "KB_AUTH__SESSION_SECRET" "KB_INGEST__WORKERS" "KB_INGEST__HEARTBEAT_PATH" "KB_INGEST__METRICS_PORT" "KB_INGEST__METRICS_HOST" }}
{{- if hasKey $.Values.settings $managed }}
{{- fail (printf "settings.%s: set it through the chart's own values (index, blobs, redis, secrets, vllm, worker)" $managed) }}
{{- end }}
{{- end }}
{{- range $name, $value := .Values.settings }}
{{ $name }}: {{ $value | toString | quote }}
{{- end }}
KB_GENERATOR__BASE_URL: {{ include "kb.generatorBaseUrl" . | quote }}
KB_INDEX__BACKEND: "qdrant"
KB_INDEX__URL: {{ required "index.url is required" .Values.index.url | quote }}
KB_INDEX__SHARDS: {{ .Values.index.shards | toString | quote }}
KB_INDEX__REPLICATION_FACTOR: {{ .Values.index.replicationFactor | toString | quote }}
KB_INDEX__WRITE_CONSISTENCY_FACTOR: {{ .Values.index.writeConsistencyFactor | toString | quote }}
KB_INDEX__STORAGE: {{ .Values.index.storage | quote }}
KB_BLOBS__BACKEND: {{ .Values.blobs.backend | quote }}
{{- if eq .Values.blobs.backend "s3" }}
KB_BLOBS__S3_BUCKET: {{ required "blobs.s3.bucket is required with blobs.backend=s3" .Values.blobs.s3.bucket | quote }}
KB_BLOBS__S3_PREFIX: {{ .Values.blobs.s3.prefix | quote }}
{{- with .Values.blobs.s3.endpointUrl }}
KB_BLOBS__S3_ENDPOINT_URL: {{ . | quote }}
{{- end }}
{{- with .Values.blobs.s3.region }}
KB_BLOBS__S3_REGION: {{ . | quote }}
{{- end }}
{{- else if eq .Values.blobs.backend "files" }}
KB_BLOBS__DIR: {{ .Values.blobs.files.dir | quote }}
{{- else }}
{{- fail (printf "blobs.backend must be files or s3, not %q" .Values.blobs.backend) }}
{{- end }}
{{- if .Values.redis.enabled }}
KB_RATE_LIMIT__REDIS_URL: {{ printf "redis://%s-redis:6379/0" (include "kb.fullname" .) | quote }}
{{- end }}
{{- end -}}

{{/* The Secret's stringData (without the session secret: see secret.yaml). */}}
{{- define "kb.secretData" -}}
KB_REGISTRY_URL: {{ required "secrets.registryUrl (KB_REGISTRY_URL, postgresql+psycopg://...) or secrets.existingSecret is required" .Values.secrets.registryUrl | quote }}
{{- if and (not .Values.redis.enabled) }}
KB_RATE_LIMIT__REDIS_URL: {{ required "redis.externalUrl is required when redis.enabled is false" .Values.redis.externalUrl | quote }}
{{- end }}
{{- range $name, $value := .Values.secrets.extra }}
{{ $name }}: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{- define "kb.sessionSecret" -}}
{{- if .Values.secrets.sessionSecret -}}
{{- .Values.secrets.sessionSecret -}}
{{- else -}}
{{- $existing := (lookup "v1" "Secret" .Release.Namespace (include "kb.fullname" .)) | default dict -}}
{{- $data := (get $existing "data") | default dict -}}
{{- $old := get $data "KB_AUTH__SESSION_SECRET" -}}
{{- if $old -}}{{ $old | b64dec }}{{- else -}}{{ randAlphaNum 48 }}{{- end -}}
{{- end -}}
{{- end -}}

{{/* envFrom + env of every kb container: (dict "root" $ "config" <ConfigMap name> "secret" <Secret name>) */}}
{{- define "kb.envFrom" -}}
- configMapRef:
    name: {{ .config }}
- secretRef:
    name: {{ .secret }}
{{- end -}}

{{- define "kb.env" -}}
- name: HOME  # caches of the libraries kb loads; the root filesystem is read-only
  value: /cache
{{- with .Values.index.apiKeySecret.name }}
- name: KB_INDEX__API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.index.apiKeySecret.key }}
{{- end }}
{{- end -}}

{{/* Writable places of a kb pod: its data directory, caches and /tmp per pod; the shared originals (files backend). */}}
{{- define "kb.volumeMounts" -}}
- name: data
  mountPath: /data
- name: cache
  mountPath: /cache
- name: tmp
  mountPath: /tmp
- name: models
  mountPath: /models
  readOnly: true
{{- if eq .Values.blobs.backend "files" }}
- name: blobs
  mountPath: {{ .Values.blobs.files.dir }}
{{- end }}
{{- end -}}

{{- define "kb.volumes" -}}
- name: data
  emptyDir: {}
- name: cache
  emptyDir: {}
- name: tmp
  emptyDir: {}
- name: models
  persistentVolumeClaim:
    claimName: {{ include "kb.modelsClaim" . }}
    readOnly: true
{{- if eq .Values.blobs.backend "files" }}
- name: blobs
  persistentVolumeClaim:
    claimName: {{ include "kb.blobsClaim" . }}
{{- end }}
{{- end -}}

{{/* Exit 0 while the worker's heartbeat file was touched within maxHeartbeatAgeSeconds (fails while it is missing). */}}
{{- define "kb.workerHeartbeatCheck" -}}
{{- printf "test $(( $(date +%%s) - $(stat -c %%Y %s) )) -lt %v" .Values.worker.heartbeatPath .Values.worker.maxHeartbeatAgeSeconds -}}
{{- end -}}
