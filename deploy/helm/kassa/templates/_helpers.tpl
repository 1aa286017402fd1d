{{/* The name of every object: the release's, with "kassa" in it once. */}}
{{- define "kassa.fullname" -}}
{{- if contains "kassa" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-kassa" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object; (dict "root" $ "component" "api") */}}
{{- define "kassa.labels" -}}
{{ include "kassa.selector" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{/* The labels a component's pods are selected by. */}}
{{- define "kassa.selector" -}}
app.kubernetes.io/name: kassa
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "kassa.image" -}}
{{ printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) | quote }}
{{- end -}}

{{/* Every kassa container's environment: services, topics, secrets, plain settings. */}}
{{- define "kassa.env" -}}
- name: KASSA_KAFKA_BROKERS
  value: {{ required "kafka.brokers: the Kafka bootstrap servers are required" .Values.kafka.brokers | quote }}
- name: KASSA_SCHEMA_REGISTRY_URL
  value: {{ required "schemaRegistry.url: the schema registry's URL is required" .Values.schemaRegistry.url | quote }}
- name: KASSA_ENVIRONMENT
  value: {{ .Values.environment | quote }}
- name: KASSA_TOPIC_PARTITIONS
  value: {{ .Values.topics.partitions | quote }}
- name: KASSA_TOPIC_REPLICATION
  value: {{ .Values.topics.replication | quote }}
{{- with .Values.topics.minInsyncReplicas }}
- name: KASSA_TOPIC_MIN_INSYNC_REPLICAS
  value: {{ . | quote }}
{{- end }}
- name: KASSA_HTTP_ADDR
  value: "0.0.0.0:8080"
- name: KASSA_OPS_ADDR
  value: "0.0.0.0:9464"
{{- range $property, $value := .Values.kafka.config }}
- name: {{ printf "KASSA_KAFKA__%s" (upper (replace "." "_" $property)) }}
  value: {{ $value | quote }}
{{- end }}
{{- if .Values.caBundle.secretName }}
- name: KASSA_KAFKA__SSL_CA_LOCATION
  value: /etc/kassa/ca/ca.pem
- name: KASSA_REDIS_CA
  value: /etc/kassa/ca/ca.pem
- name: KASSA_SCHEMA_REGISTRY_CA
  value: /etc/kassa/ca/ca.pem
{{- end }}
{{- range $name, $ref := .Values.secretEnv }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $ref.secret | quote }}
      key: {{ $ref.key | quote }}
      {{- if $ref.optional }}
      optional: true
      {{- end }}
{{- end }}
{{- range $name, $value := .Values.env }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}

{{/* Every kassa pod's volumes: a writable /tmp (the root file system is read-only), the CA. */}}
{{- define "kassa.volumes" -}}
- name: tmp
  emptyDir: {}
{{- if .Values.caBundle.secretName }}
- name: ca
  secret:
    secretName: {{ .Values.caBundle.secretName | quote }}
{{- end }}
{{- end -}}

{{- define "kassa.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.caBundle.secretName }}
- name: ca
  mountPath: /etc/kassa/ca
  readOnly: true
{{- end }}
{{- end -}}

{{/* The pod's security: the image's non-root user, nothing else. */}}
{{- define "kassa.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "kassa.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Scheduling and pull settings every pod shares. */}}
{{- define "kassa.podCommon" -}}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- include "kassa.podSecurity" . | nindent 2 }}
volumes:
  {{- include "kassa.volumes" . | nindent 2 }}
{{- end -}}
