{{- define "cadre.name" -}}{{ .Release.Name }}-cadre{{- end -}}

{{- define "cadre.labels" -}}
app.kubernetes.io/name: cadre
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "cadre.selector" -}}
app.kubernetes.io/name: cadre
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "cadre.secretName" -}}
{{- if .Values.secrets.existingSecret }}{{ .Values.secrets.existingSecret }}{{ else }}{{ include "cadre.name" . }}{{ end -}}
{{- end -}}

{{/* The environment of every Cadre container: settings, then secrets. */}}
{{- define "cadre.env" -}}
envFrom:
  - configMapRef:
      name: {{ include "cadre.name" . }}
  - secretRef:
      name: {{ include "cadre.secretName" . }}
{{- end -}}

{{/* Non-root, no privilege escalation, no capabilities, read-only root. */}}
{{- define "cadre.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities:
  drop: ["ALL"]
{{- end -}}

{{- define "cadre.volumes" -}}
- name: home
  {{- if .Values.home.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.home.existingClaim }}
  {{- else }}
  emptyDir: {}
  {{- end }}
- name: tmp
  emptyDir: {}
- name: chat-files
  emptyDir: {}
{{- end -}}

{{- define "cadre.mounts" -}}
- name: home
  mountPath: /var/lib/cadre
- name: tmp
  mountPath: /tmp
# Chainlit keeps a chat session's uploads under the working directory.
- name: chat-files
  mountPath: /srv/cadre/.files
{{- end -}}

{{- define "cadre.image" -}}
{{- if .Values.image.digest }}{{ .Values.image.repository }}@{{ .Values.image.digest }}{{ else }}{{ .Values.image.repository }}:{{ .Values.image.tag }}{{ end -}}
{{- end -}}
