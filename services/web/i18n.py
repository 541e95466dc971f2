"""UI labels in English and Chinese: the one place the interface's wording lives.

Templates render labels in the user's language; the same table goes to the browser as JSON so the
EN / 中文 toggle switches labels and report together without a reload. Medical vocabulary (region
and finding names) is not here: it comes from `shared/vocab`.
"""

from __future__ import annotations

from typing import Literal

Lang = Literal["en", "zh"]

LABELS: dict[str, dict[str, str]] = {
    "app_name": {"en": "MedRegA review", "zh": "MedRegA 审阅"},
    "sign_in": {"en": "Sign in", "zh": "登录"},
    "sso_sign_in": {"en": "Sign in with single sign-on", "zh": "单点登录"},
    "sign_out": {"en": "Sign out", "zh": "退出"},
    "username": {"en": "Username", "zh": "用户名"},
    "password": {"en": "Password", "zh": "密码"},
    "bad_login": {"en": "Wrong username or password.", "zh": "用户名或密码错误。"},
    "too_many_logins": {
        "en": "Too many failed sign-ins. Try again in a few minutes.",
        "zh": "登录失败次数过多，请几分钟后再试。",
    },
    "worklist": {"en": "Worklist", "zh": "工作列表"},
    "audit": {"en": "Audit log", "zh": "审计日志"},
    "users": {"en": "Users", "zh": "用户"},
    "search": {"en": "Patient, ID or accession", "zh": "患者、ID 或检查号"},
    "all_statuses": {"en": "All statuses", "zh": "全部状态"},
    "all_modalities": {"en": "All modalities", "zh": "全部模态"},
    "filter": {"en": "Filter", "zh": "筛选"},
    "patient": {"en": "Patient", "zh": "患者"},
    "patient_id": {"en": "Patient ID", "zh": "患者 ID"},
    "accession": {"en": "Accession", "zh": "检查号"},
    "modality": {"en": "Modality", "zh": "模态"},
    "exam": {"en": "Exam", "zh": "检查"},
    "received": {"en": "Received", "zh": "接收时间"},
    "status": {"en": "Status", "zh": "状态"},
    "priority": {"en": "Priority", "zh": "优先级"},
    "critical": {"en": "Critical", "zh": "危急"},
    "new_images_after_signoff": {"en": "New images after sign-off", "zh": "签发后有新图像"},
    "acknowledge_new_images": {"en": "Seen: dismiss", "zh": "已查看：忽略"},
    "conflicting_instances": {"en": "Conflicting image copies", "zh": "图像副本不一致"},
    "no_studies": {"en": "No studies match.", "zh": "没有符合条件的检查。"},
    "previous": {"en": "Previous", "zh": "上一页"},
    "next": {"en": "Next", "zh": "下一页"},
    "live": {"en": "Live", "zh": "实时"},
    "updated": {"en": "updated", "zh": "已更新"},
    "offline": {"en": "Connection lost — retrying", "zh": "连接中断——正在重试"},
    "st_receiving": {"en": "Receiving", "zh": "接收中"},
    "st_drafting": {"en": "Drafting", "zh": "起草中"},
    "st_draft_ready": {"en": "Draft ready", "zh": "草稿就绪"},
    "st_in_review": {"en": "In review", "zh": "审阅中"},
    "st_not_applicable": {"en": "Not applicable", "zh": "不适用"},
    "st_signed": {"en": "Signed", "zh": "已签发"},
    "st_failed": {"en": "Draft failed", "zh": "起草失败"},
    "st_delivery_failed": {"en": "Delivery failed", "zh": "发送失败"},
    "ai_banner": {
        "en": "AI draft — not for diagnostic use until signed",
        "zh": "AI 草稿——签发前不得用于诊断",
    },
    "signed_banner": {"en": "Signed report", "zh": "已签发报告"},
    "findings": {"en": "Findings", "zh": "所见"},
    "impression": {"en": "Impression", "zh": "印象"},
    "regions": {"en": "Regions and findings", "zh": "区域与发现"},
    "normal": {"en": "normal", "zh": "正常"},
    "accept": {"en": "Accept", "zh": "接受"},
    "reject": {"en": "Reject", "zh": "拒绝"},
    "undo": {"en": "Undo", "zh": "撤销"},
    "adjust": {"en": "Adjust box", "zh": "调整框"},
    "save_box": {"en": "Save box", "zh": "保存框"},
    "cancel": {"en": "Cancel", "zh": "取消"},
    "relabel": {"en": "Label", "zh": "标签"},
    "edit": {"en": "Edit", "zh": "编辑"},
    "save": {"en": "Save", "zh": "保存"},
    "delete": {"en": "Delete", "zh": "删除"},
    "add_sentence": {"en": "Add sentence", "zh": "添加句子"},
    "rv_proposed": {"en": "proposed", "zh": "待审"},
    "rv_accepted": {"en": "accepted", "zh": "已接受"},
    "rv_rejected": {"en": "rejected", "zh": "已拒绝"},
    "rv_adjusted": {"en": "adjusted", "zh": "已调整"},
    "other_lang_stale": {"en": "other language not updated", "zh": "另一语言未更新"},
    "sign": {"en": "Sign report", "zh": "签发报告"},
    "sign_correction": {"en": "Sign correction", "zh": "签发更正"},
    "sign_confirm": {
        "en": "Sign this report as final? It will be sent to the PACS and the RIS.",
        "zh": "确认签发此报告为最终报告？报告将发送至 PACS 和 RIS。",
    },
    "unreviewed_note": {
        "en": "findings not yet reviewed will be signed as drafted",
        "zh": "项未审阅的发现将按草稿签发",
    },
    "signed_by": {"en": "Signed by", "zh": "签发人"},
    "version": {"en": "Version", "zh": "版本"},
    "deliveries": {"en": "Deliveries", "zh": "发送状态"},
    "retry": {"en": "Retry", "zh": "重试"},
    "retry_draft": {"en": "Retry draft", "zh": "重新起草"},
    "draft_note": {"en": "Note on this draft", "zh": "草稿说明"},
    "locate": {"en": "Locate", "zh": "定位"},
    "locate_hint": {"en": "Structure (EN or 中文)", "zh": "结构名称（中文或 EN）"},
    "identify": {"en": "Identify", "zh": "识别"},
    "identify_hint": {
        "en": "Draw a box on the image to name the structure",
        "zh": "在图像上画框以识别结构",
    },
    "busy": {
        "en": "The model is busy or did not answer in time. Try again.",
        "zh": "模型繁忙或未及时响应，请重试。",
    },
    "no_answer": {"en": "The model could not answer.", "zh": "模型无法回答。"},
    "not_found": {"en": "Not found on this image.", "zh": "在此图像上未找到。"},
    "boxes": {"en": "Boxes", "zh": "标注框"},
    "normal_regions": {"en": "Normal regions", "zh": "正常区域"},
    "amend": {"en": "Amend (correction)", "zh": "修改（更正）"},
    "window": {"en": "Window", "zh": "窗宽窗位"},
    "zoom_fit": {"en": "Fit", "zh": "适应"},
    "slice": {"en": "Image", "zh": "图像"},
    "key_image": {"en": "key image", "zh": "关键图像"},
    "no_report": {"en": "No report for this study.", "zh": "此检查没有报告。"},
    "reason": {"en": "Reason", "zh": "原因"},
    "conflict": {
        "en": "The report changed since you opened it. Reloaded.",
        "zh": "报告已被他人修改，已重新加载。",
    },
    "saved": {"en": "Saved", "zh": "已保存"},
    "error": {"en": "Error", "zh": "错误"},
    "back": {"en": "Back to worklist", "zh": "返回工作列表"},
    "time": {"en": "Time", "zh": "时间"},
    "user": {"en": "User", "zh": "用户"},
    "action": {"en": "Action", "zh": "操作"},
    "object": {"en": "Object", "zh": "对象"},
    "from": {"en": "From", "zh": "来源"},
    "details": {"en": "Details", "zh": "详情"},
    "full_name": {"en": "Full name", "zh": "姓名"},
    "role": {"en": "Role", "zh": "角色"},
    "create_user": {"en": "Create user", "zh": "创建用户"},
    "active": {"en": "Active", "zh": "启用"},
    "forbidden": {"en": "Your role does not allow this page.", "zh": "您的角色无权访问此页面。"},
    "change_password": {"en": "Change password", "zh": "修改密码"},
    "current_password": {"en": "Current password", "zh": "当前密码"},
    "new_password": {"en": "New password", "zh": "新密码"},
    "password_changed": {
        "en": "Password changed. Every other session of yours has been signed out.",
        "zh": "密码已修改。您在其他设备上的会话均已退出。",
    },
    "password_rules": {
        "en": "At least 12 characters; a phrase is fine. Common passwords are refused.",
        "zh": "至少 12 个字符，可以是一句话。常见密码将被拒绝。",
    },
    "sign_out_everywhere": {"en": "Sign out everywhere", "zh": "在所有设备上退出"},
    "sessions_ended": {"en": "Sessions ended", "zh": "已结束的会话"},
}


def label(key: str, lang: Lang) -> str:
    entry = LABELS.get(key)
    return entry[lang] if entry else key


def language(value: str | None) -> Lang:
    return "zh" if value == "zh" else "en"


def table(lang: Lang) -> dict[str, str]:
    return {key: entry[lang] for key, entry in LABELS.items()}
