{{/*
The trainer pod spec, shared by the one-off Job and the CronJob:
erc-train fit --dataset <trainer.dataset> --store <modelStore.mountPath>, publishing into the model-store PVC.
*/}}
{{- define "erc-stream.trainerPodSpec" -}}
{{- $v := .Values -}}
{{- $t := $v.trainer -}}
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
    {{- with $t.resources }}
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
{{- with $t.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $t.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
