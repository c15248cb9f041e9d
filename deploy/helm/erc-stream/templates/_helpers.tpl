{{/*
Names and labels.
*/}}
{{- define "erc-stream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "erc-stream.fullname" -}}
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

{{- define "erc-stream.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "erc-stream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "erc-stream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "erc-stream.labels" -}}
helm.sh/chart: {{ include "erc-stream.chart" . }}
{{ include "erc-stream.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: erc-stream
{{- end }}

{{/* Labels of the worker pods (selector of the Deployment, Service and PDB). */}}
{{- define "erc-stream.workerSelectorLabels" -}}
{{ include "erc-stream.selectorLabels" . }}
app.kubernetes.io/component: worker
{{- end }}

{{- define "erc-stream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "erc-stream.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "erc-stream.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "erc-stream.modelStoreClaim" -}}
{{- default (printf "%s-models" (include "erc-stream.fullname" .)) .Values.modelStore.pvc.existingClaim }}
{{- end }}

{{/* Where the Kafka TLS Secret is mounted in the worker. */}}
{{- define "erc-stream.kafkaTlsDir" -}}
/etc/erc-stream/kafka-tls
{{- end }}

{{/* The device the worker is told to use: GPU mode means cuda. */}}
{{- define "erc-stream.device" -}}
{{- if .Values.gpu.enabled }}cuda{{ else }}{{ .Values.worker.device }}{{ end }}
{{- end }}

{{/*
The autoscaler ceiling: more consumers than input partitions would sit idle,
so the ceiling defaults to kafka.inputPartitions and may not exceed it.
Usage: include "erc-stream.maxReplicas" (list . $configured "autoscaling.keda.maxReplicaCount")
*/}}
{{- define "erc-stream.maxReplicas" -}}
{{- $root := index . 0 }}
{{- $configured := index . 1 }}
{{- $field := index . 2 }}
{{- $partitions := int $root.Values.kafka.inputPartitions }}
{{- if kindIs "invalid" $configured }}
{{- $partitions }}
{{- else if gt (int $configured) $partitions }}
{{- fail (printf "%s=%d exceeds kafka.inputPartitions=%d: consumers beyond the partition count get no partition and sit idle; lower it or add partitions to %s" $field (int $configured) $partitions $root.Values.worker.inputTopic) }}
{{- else }}
{{- int $configured }}
{{- end }}
{{- end }}

{{/*
Cross-field checks the JSON schema cannot express clearly. Included by the Deployment.
*/}}
{{- define "erc-stream.validate" -}}
{{- $v := .Values }}
{{- if and $v.autoscaling.keda.enabled $v.autoscaling.hpa.enabled }}
{{- fail "autoscaling.keda.enabled and autoscaling.hpa.enabled are both true: KEDA creates its own HPA; enable only one" }}
{{- end }}
{{- if and $v.gpu.enabled (eq $v.worker.device "cpu") }}
{{- fail "gpu.enabled=true with worker.device=cpu: the GPU would be reserved but unused; set worker.device to auto or cuda, or disable gpu" }}
{{- end }}
{{- if hasPrefix "SASL_" $v.kafka.securityProtocol }}
{{- if not $v.kafka.sasl.mechanism }}
{{- fail (printf "kafka.securityProtocol=%s needs kafka.sasl.mechanism (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)" $v.kafka.securityProtocol) }}
{{- end }}
{{- if not $v.kafka.sasl.username }}
{{- fail (printf "kafka.securityProtocol=%s needs kafka.sasl.username" $v.kafka.securityProtocol) }}
{{- end }}
{{- if not $v.kafka.sasl.passwordSecret.name }}
{{- fail (printf "kafka.securityProtocol=%s needs kafka.sasl.passwordSecret.name: an existing Secret holding the SASL password" $v.kafka.securityProtocol) }}
{{- end }}
{{- else if $v.kafka.sasl.mechanism }}
{{- fail (printf "kafka.sasl.mechanism=%s is set but kafka.securityProtocol=%s does not use SASL; use SASL_PLAINTEXT or SASL_SSL" $v.kafka.sasl.mechanism $v.kafka.securityProtocol) }}
{{- end }}
{{- if and $v.kafka.tls.secretName (not (hasSuffix "SSL" $v.kafka.securityProtocol)) }}
{{- fail (printf "kafka.tls.secretName is set but kafka.securityProtocol=%s does not use TLS; use SSL or SASL_SSL" $v.kafka.securityProtocol) }}
{{- end }}
{{- if ne (empty $v.kafka.tls.certKey) (empty $v.kafka.tls.keyKey) }}
{{- fail "kafka.tls.certKey and kafka.tls.keyKey go together (mutual TLS): set both or neither" }}
{{- end }}
{{- if and (or $v.kafka.tls.certKey $v.kafka.tls.keyKey) (not $v.kafka.tls.secretName) }}
{{- fail "kafka.tls.certKey/keyKey need kafka.tls.secretName: the Secret that holds those files" }}
{{- end }}
{{- if eq $v.modelStore.source "image" }}
{{- if not $v.modelStore.image.repository }}
{{- fail "modelStore.source=image needs modelStore.image.repository: the image that holds a published model store" }}
{{- end }}
{{- if $v.trainer.enabled }}
{{- fail "trainer.enabled=true needs modelStore.source=pvc: the trainer publishes into the shared volume, an image-sourced store is read-only" }}
{{- end }}
{{- end }}
{{- if and (eq $v.modelStore.source "pvc") (not $v.modelStore.pvc.create) (not $v.modelStore.pvc.existingClaim) }}
{{- fail "modelStore.source=pvc with modelStore.pvc.create=false needs modelStore.pvc.existingClaim" }}
{{- end }}
{{- if and $v.trainer.enabled (not $v.trainer.data.existingClaim) }}
{{- fail "trainer.enabled=true needs trainer.data.existingClaim: a PVC holding the datasets (meld/, emorynlp/ ...)" }}
{{- end }}
{{- if and $v.trainer.enabled (gt (int $v.trainer.gpus) 0) (ne (int $v.trainer.gpus) (int $v.trainer.nprocPerNode)) }}
{{- fail (printf "trainer.gpus=%d with trainer.nprocPerNode=%d: torchrun runs one training process per GPU; set trainer.nprocPerNode=%d" (int $v.trainer.gpus) (int $v.trainer.nprocPerNode) (int $v.trainer.gpus)) }}
{{- end }}
{{- end }}
