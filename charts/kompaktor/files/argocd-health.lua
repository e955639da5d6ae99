-- Argo CD health of a kompaktor.io OptimizationJob: the value of
-- `resource.customizations.health.kompaktor.io_OptimizationJob` in argocd-cm.
-- Succeeded: Healthy. Pending, Running, or a spec generation the operator has not seen yet:
-- Progressing. Failed, Cancelled: Degraded. Suspended (spec.suspend): Suspended.
-- The message is the operator's own: its Reconciling or Stalled condition, else status.message.
local hs = {}

local function condition(status, kind)
  for _, c in ipairs(status.conditions or {}) do
    if c.type == kind and c.status == "True" and c.message ~= nil and c.message ~= "" then
      return c.message
    end
  end
  return nil
end

local status = obj.status
local generation = obj.metadata.generation
if status == nil or status.phase == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Kompaktor operator to pick the job up"
  return hs
end
if generation ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the Kompaktor operator to see generation " .. generation
  return hs
end

local phase = status.phase
if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = status.message or "All stages succeeded"
elseif phase == "Pending" or phase == "Running" then
  hs.status = "Progressing"
  hs.message = condition(status, "Reconciling") or status.message or phase
elseif phase == "Failed" or phase == "Cancelled" then
  hs.status = "Degraded"
  hs.message = condition(status, "Stalled") or status.message or ("The job is " .. phase)
elseif phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = status.message or "The job is suspended (spec.suspend)"
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
end
return hs
