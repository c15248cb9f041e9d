{{/*
The trainer pod spec, shared by the one-off Job and the CronJob:
erc-train fit --dataset <trainer.dataset> --store <modelStore.mountPath>, publishing into the model-store PVC.
With trainer.nprocPerNode > 1, `erc-train fit --nproc-per-node N` becomes torchrun (exec) running N
DistributedDataParallel processes in the pod: gloo on CPU, NCCL with trainer.gpus GPUs (one per process).
*/}}
{{- define "erc-stream.trainerPodSpec" -}}
{{- $v := .Values -}}
{{- $t := $v.trainer -}}
{{- $nproc := int $t.nprocPerNode -}}
{{- $gpus := int $t.gpus -}}
{{- /* GPUs go into limits only (Kubernetes sets requests equal to limits for extended resources). */ -}}
{{- $resources := deepCopy (default dict $t.resources) -}}
{{- if gt $gpus 0 -}}
{{- $limits := deepCopy (default dict $t.resources.limits) -}}
{{- $_ := set $limits "nvidia.com/gpu" $gpus -}}
{{- $_ := set $resources "limits" $limits -}}
{{- $_ := set $resources "requests" (omit (deepCopy (default dict $t.resources.requests)) "nvidia.com/gpu") -}}
{{- end -}}
{{- $tolerations := default list $t.tolerations -}}
{{- $gpuToleration := dict "key" "nvidia.com/gpu" "operator" "Exists" "effect" "NoSchedule" -}}
{{- if and (gt $gpus 0) (not (has $gpuToleration $tolerations)) -}}
{{- $tolerations = append $tolerations $gpuToleration -}}
{{- end -}}
restartPolicy: Never
serviceAccountName: {{ include "erc-stream.serviceAccountName" . }}
automountServiceAccountToken: {{ $v.serviceAccount.automountServiceAccountToken }}
{{- with $v.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
containers:
  - name: trainer
    image: {{ include "erc-stream.image" . | quote }}
    imagePullPolicy: {{ $v.image.pullPolicy }}
    command: ["erc-train"]
    args:
      - fit
      {{- if gt $nproc 1 }}
      - {{ printf "--nproc-per-node=%d" $nproc | quote }}
      {{- end }}
      {{- if gt $gpus 0 }}
      - --device
      - cuda
      {{- end }}
      - --dataset
      - {{ $t.dataset | quote }}
      - --store
      - {{ $v.modelStore.mountPath | quote }}
      {{- range $t.extraArgs }}
      - {{ . | quote }}
      {{- end }}
    env:
      - name: ERC_DATA_DIR
        value: {{ $t.data.mountPath | quote }}
      - name: HF_HUB_OFFLINE
        value: "1"
      - name: TRANSFORMERS_OFFLINE
        value: "1"
      - name: HOME
        value: /tmp
      {{- with $t.openai.baseUrl }}
      - name: OPENAI_BASE_URL
        value: {{ . | quote }}
      {{- end }}
      {{- with $t.openai.model }}
      - name: OPENAI_MODEL
        value: {{ . | quote }}
      {{- end }}
      {{- with $t.openai.apiKeySecret.name }}
      - name: OPENAI_API_KEY
        valueFrom:
          secretKeyRef:
            name: {{ . }}
            key: {{ $t.openai.apiKeySecret.key }}
      {{- end }}
      {{- with $t.extraEnv }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    {{- with $resources }}
    resources:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with $v.securityContext }}
    securityContext:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    volumeMounts:
      - name: models
        mountPath: {{ $v.modelStore.mountPath }}
      - name: data
        mountPath: {{ $t.data.mountPath }}
        readOnly: true
      - name: tmp
        mountPath: /tmp
      {{- if gt $nproc 1 }}
      # NCCL and torch's worker processes exchange tensors through /dev/shm (64Mi by default in a container).
      - name: dshm
        mountPath: /dev/shm
      {{- end }}
volumes:
  - name: models
    persistentVolumeClaim:
      claimName: {{ include "erc-stream.modelStoreClaim" . }}
  - name: data
    persistentVolumeClaim:
      claimName: {{ $t.data.existingClaim }}
      readOnly: true
  - name: tmp
    emptyDir: {}
  {{- if gt $nproc 1 }}
  - name: dshm
    emptyDir:
      medium: Memory
      sizeLimit: {{ $t.shmSizeLimit }}
  {{- end }}
{{- with $t.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
